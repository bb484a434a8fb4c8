"""Run every bad-input case of tests/stages/test_bad_inputs.py through the stage command lines and print the table:
case, stage, exit status, the error line the user sees, and whether a traceback was shown.

Usage: python bench/bad_inputs.py   (writes bench/results/bad_inputs.json, prints a markdown table)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from tests.conftest import Project
    from tests.stages.test_bad_inputs import CASES, run_stage_cli

    rows = []
    for case in CASES:
        root = Path(tempfile.mkdtemp(prefix="genpipe-bad-"))
        try:
            cwd = os.getcwd()
            os.chdir(root)
            try:
                case.setup(Project(root))
            finally:
                os.chdir(cwd)
            proc = run_stage_cli(root, case.stage, case.limit_file_size)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        line = errors[0] if errors else ""
        rows.append({"case": case.name, "stage": case.stage, "exit": proc.returncode,
                     "one_clear_line": len(errors) == 1 and case.expect in line,
                     "traceback": "Traceback" in proc.stderr, "error": line.replace(str(root), "<project>")})
    summary = {"cases": len(rows), "clear_errors": sum(r["one_clear_line"] and r["exit"] != 0 for r in rows),
               "tracebacks_shown": sum(r["traceback"] for r in rows)}
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "summary": summary, "rows": rows}
    (REPO / "bench" / "results" / "bad_inputs.json").write_text(json.dumps(out, indent=2) + "\n")
    print("| case | stage | exit | traceback | what the user sees |")
    print("|---|---|---|---|---|")
    for r in rows:
        shown = r["error"] if len(r["error"]) < 150 else r["error"][:147] + "..."
        print(f"| {r['case']} | {r['stage']} | {r['exit']} | {'yes' if r['traceback'] else 'no'} | `{shown}` |")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
