#!/usr/bin/env bash
# Stage the state of every run in results/ for a commit: config, metrics, plots,
# summary, final weights, and -- for a run still training -- only its NEWEST checkpoint
# (older checkpoints are untracked, so the history grows by one checkpoint per commit).
# Usage (repository root):  bash results/track_latest.sh && git commit -m "results: ..."
set -euo pipefail
cd "$(dirname "$0")/.."
git add results/logs results/README.md 2>/dev/null || true
for run in results/*/; do
  run=${run%/}
  [ -f "$run/config.json" ] || continue
  git add "$run"
  ck="$run/checkpoints"
  [ -f "$ck/latest.json" ] || continue
  epoch=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['epoch'])" "$ck/latest.json")
  newest=$(printf "ckpt-%04d" "$epoch")
  for f in $(git ls-files "$ck"); do
    case "$(basename "$f")" in
      "$newest".eqx|"$newest".json|latest.json) ;;
      *) git rm -q --cached "$f" ;;
    esac
  done
  git add -f "$ck/$newest.eqx" "$ck/$newest.json" "$ck/latest.json"
  echo "$run: tracking checkpoint $newest"
done
