"""``hermes info``: versions, accelerators, threads and cache folders, for bug reports."""

from __future__ import annotations

import os
import platform
import sys

from rich.table import Table

from hermes_cli._common import DebugOption, handle_errors, out


def environment_report() -> list[tuple[str, str]]:
    """(item, value) rows describing this installation: versions, devices, threads, caches.

    Imports torch (and huggingface_hub, platformdirs) here, not at module import, so that
    ``hermes --help`` stays fast.
    """
    import platformdirs
    import torch
    from huggingface_hub import constants as hf_constants

    import hermes_model

    rows = [
        ("Hermes", hermes_model.__version__),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("Platform", platform.platform()),
        ("torch", torch.__version__),
    ]
    if torch.cuda.is_available():
        rows.append(("CUDA", f"{torch.version.cuda}, {torch.cuda.device_count()} device(s)"))
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            memory = props.total_memory / 1024**3
            rows.append((f"  cuda:{index}", f"{props.name}, {memory:.1f} GiB"))
    else:
        rows.append(("CUDA", "no CUDA device found"))
    mps = getattr(torch.backends, "mps", None)
    mps_found = mps is not None and mps.is_available()
    rows.append(("MPS (Apple GPU)", "available" if mps_found else "not available"))
    rows.append(
        (
            "CPU threads",
            f"torch uses {torch.get_num_threads()} of {os.cpu_count()} logical CPUs",
        )
    )
    rows.append(("HF_HOME", os.environ.get("HF_HOME", f"(unset) {hf_constants.HF_HOME}")))
    rows.append(("Hugging Face cache", str(hf_constants.HF_HUB_CACHE)))
    offline = "on" if hf_constants.HF_HUB_OFFLINE else "off"
    rows.append(("HF_HUB_OFFLINE", offline))
    rows.append(("Hermes cache", platformdirs.user_cache_dir("hermes")))
    return rows


def info_command(debug: DebugOption = False) -> None:
    """Show Hermes, Python and torch versions, GPUs, CPU threads and cache folders."""
    with handle_errors(debug):
        table = Table(title="Hermes environment", show_header=False)
        table.add_column("item", style="bold", no_wrap=True)
        table.add_column("value", overflow="fold")
        for item, value in environment_report():
            table.add_row(item, value)
        out.print(table)
