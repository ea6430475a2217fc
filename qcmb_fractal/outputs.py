"""Where a run writes: checked before any calculation starts, written so a crash never leaves half a file.

"Escaping" for a command-line user means writing somewhere other than the path they named: through a
symbolic link (which could point at any file, e.g. one planted in a shared directory), over the input
file, or the result and the checkpoint over each other. Those are refused, as is a directory that cannot
be written, so hours of calculations never end in an unwritable result.
"""

import os
from pathlib import Path

from qcmb_fractal.errors import InputError


def check_output_paths(input_path: Path, output: Path, checkpoint: Path | None) -> None:
    """Refuse result/checkpoint paths that would write elsewhere than named, or cannot be written at all."""
    if output.is_dir():
        raise InputError(f"--output {output} is a directory; give a file name such as {output / 'result.json'}.")
    if not output.parent.is_dir():
        raise InputError(f"the output directory {output.parent} does not exist; create it or choose another --output.")
    named = {"--output": output} | ({"--checkpoint": checkpoint} if checkpoint is not None else {})
    for option, path in named.items():
        if path.is_symlink():
            raise InputError(
                f"{option} {path} is a symbolic link (to {os.readlink(path)}); give the real path instead, "
                "so the run writes exactly where you say."
            )
        if path.exists() and input_path.exists() and path.resolve() == input_path.resolve():
            raise InputError(f"{option} {path} is the input file; choose another name so the input is kept.")
    if checkpoint is not None and checkpoint.resolve() == output.resolve():
        raise InputError(f"--output and --checkpoint are the same file ({output}); give them different names.")
    if not os.access(output.parent, os.W_OK | os.X_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise InputError(f"cannot write {output} (no permission or a read-only filesystem); choose another --output.")


def write_output(output: Path, text: str, *, checkpoint: Path | None = None) -> None:
    """Write via a temporary file and a rename: the result is either whole or absent, never truncated."""
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, output)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        kept = f" The finished calculations are kept in {checkpoint}; rerun" if checkpoint else " Rerun"
        raise InputError(f"cannot write the result to {output}: {err.strerror}.{kept} with another --output.") from None
