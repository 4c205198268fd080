"""Check gcloud command lines against the installed Cloud SDK's own argument parser.

Run with the SDK's Python (see conftest.py): reads one JSON argv (without "gcloud") per line
on stdin, runs each through gcloud's CLI in this one process, and answers each line at once
with one JSON verdict line: {"argv", "exit", "stderr"}. With no account configured, a command whose arguments
parse stops at authentication (exit 1, "active account"); one that does not parse exits 2
before reaching it. Loading the CLI once makes a few dozen checks take seconds, not minutes.
"""

import contextlib
import io
import json
import os
import sys

sdk = os.environ["ASSAY_GCLOUD_SDK_ROOT"]
sys.path[:0] = [os.path.join(sdk, "lib"), os.path.join(sdk, "lib", "third_party")]

from googlecloudsdk import gcloud_main  # noqa: E402

cli = gcloud_main.CreateCLI([])
# gcloud logs its errors through a handler bound to the process's stderr; swap the file
# descriptor itself to capture each command's share.
real_stderr = os.dup(2)
for line in sys.stdin:
    if not line.strip():
        continue
    argv = json.loads(line)
    with open(os.devnull, "w") as sink, io.StringIO() as captured:
        tmp = os.open(os.path.join(os.environ["ASSAY_GCLOUD_TMP"], "stderr"), os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        os.dup2(tmp, 2)
        code = 0
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(captured):
                cli.Execute(argv, call_arg_complete=False)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # noqa: BLE001 — a parse that went further than auth: report, keep going
            code = f"{type(e).__name__}: {e}"
        finally:
            sys.stderr.flush()
            os.dup2(real_stderr, 2)
        os.lseek(tmp, 0, os.SEEK_SET)
        text = os.read(tmp, 1 << 20).decode(errors="replace") + captured.getvalue()
        os.close(tmp)
    print(json.dumps({"argv": argv, "exit": code, "stderr": text[-2000:]}), flush=True)
