# plan_matches.py REPORT W: the run report's plan section (dsacp run/generate --json) says the
# planner's calls and bytes per phase, KV and weights equal the measured ones on each of the W
# ranks; prints the calls and rank 0's KV bytes. Used by cp_mpi.sh and run.sh.
import json, sys
p = json.load(open(sys.argv[1]))['cp']['plan']
assert p['tracked'] and len(p['ranks']) == int(sys.argv[2]), p
n = 0
for r in p['ranks']:
    if r['kv']['planned'] != r['kv']['engine']: print('rank', r['rank'], 'kv', r['kv']); sys.exit(1)
    if 'weights' in r and r['weights']['planned'] != r['weights']['engine']: print('rank', r['rank'], 'weights', r['weights']); sys.exit(1)
    for name, x in r['phases'].items():
        if x['planned'] != x['measured']: print('rank', r['rank'], name, x); sys.exit(1)
        n += x['measured'][0]
assert p['matches']
print('%d calls, KV %d B on rank 0' % (n, sum(p['ranks'][0]['kv']['engine'])))
