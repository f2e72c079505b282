#!/usr/bin/env python3
"""Sum meson test results from one or more build dirs' testlog.json files
and print the closing line 'N passed, N failed, N skipped'. Exit 1 if any
test failed (or none ran)."""
import json
import sys

passed = failed = skipped = 0
for logdir in sys.argv[1:]:
    path = f"{logdir}/meson-logs/testlog.json"
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as e:
        print(f"test-summary: {path}: {e}", file=sys.stderr)
        failed += 1
        continue
    for line in lines:
        t = json.loads(line)
        r = t.get("result")
        if r in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r == "SKIP":
            skipped += 1
        else:
            failed += 1
            print(f"FAILED: {logdir}: {t.get('name')} ({r})")
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed or passed == 0 else 0)
