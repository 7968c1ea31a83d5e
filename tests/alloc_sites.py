#!/usr/bin/env python3
"""Summarizes DSACP_ALLOC_SITES=1 output of test_alloc: allocations per decode token by the
function that made them (file:function, resolved with addr2line), the OpenMP team allocations
marked, and for a kernel the module function that called it.

    DSACP_ALLOC_SITES=1 build/test_alloc 2> sites.txt
    tests/alloc_sites.py build/test_alloc sites.txt
"""
import collections
import re
import subprocess
import sys

EXTRA = 16  # decode tokens the stacks cover (test_alloc's EXTRA)
ALLOCATORS = {'counted', 'malloc', 'calloc', 'realloc', 'aligned_alloc', 'posix_memalign', 'memalign',
              'dsacp_alloc', 'dsacp_calloc'}


def main():
    exe, path = sys.argv[1], sys.argv[2]
    text = open(path).read()
    frame = re.escape(exe.rsplit('/', 1)[-1]) + r'\(\+?(0x[0-9a-f]+)\)\['  # the executable's own frames
    offsets = sorted(set(re.findall(frame, text)))
    lines = subprocess.run(['addr2line', '-f', '-e', exe] + offsets, capture_output=True, text=True).stdout.split('\n')
    where = {}
    for i, off in enumerate(offsets):
        loc = re.sub(r'.*/(src|tests)/', r'\1/', lines[2 * i + 1].split(' ')[0]).rsplit(':', 1)[0]
        where[off] = (lines[2 * i], loc)
    runs = [r for r in re.split(r'(?=allocation 0:\n)', text) if r.strip()]
    for n, run in enumerate(runs):
        count = collections.Counter()
        for stack in run.split('allocation ')[1:]:
            frames = [where[o] for o in re.findall(frame, stack) if o in where]
            frames = [f for f in frames if f[0] not in ALLOCATORS and f[1].startswith(('src/', 'tests/'))]
            if not frames:
                count['(outside the library)'] += 1
                continue
            fn, loc = frames[0]
            site = f'{loc}:{fn}' + (' [OpenMP team]' if 'libgomp' in stack else '')
            if loc.startswith('src/kernels'):
                caller = next((f'{l}:{f}' for f, l in frames if not l.startswith('src/kernels')), '?')
                site += f'  (called from {caller})'
            count[site] += 1
        print(f'configuration {n + 1}: {sum(count.values()) / EXTRA:.1f} allocations per decode token')
        for site, c in count.most_common():
            print(f'  {c / EXTRA:6.1f}  {site}')


if __name__ == '__main__':
    main()
