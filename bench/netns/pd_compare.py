#!/usr/bin/env python3
"""The disaggregated run's transfer beside the link's prediction (bench/pd_netns.sh pd).

    pd_compare.py REPORT.json LATENCY_US GBPS

REPORT: `dsacp run --json` of a disaggregated run. Per request: its prompt, the transfer's bytes
and messages (every producer rank's sends, headers included), the measured transfer time after
the prefill (kv_ready_s - prefill_done_s: what the producer's last layer leaves to the link), and
the link rule the planner prices a transfer with (dsacp_plan_link_seconds: bytes / bandwidth +
messages x per-message latency) for the whole transfer. The transfer runs in flight with the
prefill, so the measured tail is at most the whole: a slow link leaves most of it exposed.
"""
import json
import sys


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    rep = json.load(open(sys.argv[1]))
    lat_s, bw = float(sys.argv[2]) * 1e-6, float(sys.argv[3]) * 1e9 / 8
    d = rep.get('disaggregated')
    if d is None:
        sys.exit('pd_compare: %s is not a disaggregated run (no "disaggregated")' % sys.argv[1])
    t = d['transfer']
    print('  %-4s %7s %10s %5s %12s %12s %9s' % ('req', 'prompt', 'kv bytes', 'msgs', 'measured ms', 'link rule ms',
                                              'TTFT ms'))
    for r in rep['requests']:
        pred = (r['kv_bytes'] / bw + r['kv_messages'] * lat_s) * 1e3
        print('  %-4d %7d %10d %5d %12.2f %12.2f %9.1f' % (r['id'], r['prompt_len'], r['kv_bytes'], r['kv_messages'],
                                                           r['transfer_ms'], pred, r['ttft_ms']))
    print('  total %d bytes in %d messages; transfer after prefill mean / p99 %.2f / %.2f ms; link counters equal the '
          'formula: %s' % (t['bytes'], t['messages'], t['mean_transfer_ms'], t['p99_transfer_ms'],
                           t['counters_equal_formula']))
    v = rep.get('verify')
    if v:
        print('  --verify: %d of %d requests identical to one process (%s)' % (v['identical'], v['requests'],
                                                                           'passed' if v['passed'] else 'FAILED'))
    if not t['counters_equal_formula'] or (v and not v['passed']):
        sys.exit(1)


if __name__ == '__main__':
    main()
