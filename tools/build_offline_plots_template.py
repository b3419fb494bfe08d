"""Build .dvc/plots/offline.html: DVC's plots page with vega, vega-lite and vega-embed inlined.

DVC's default page loads these from a CDN, so `dvc plots show/diff` output is blank
offline. This template (set as `plots.html_template` in .dvc/config) carries the exact
versions DVC's renderer targets, taken from the npm registry, with their BSD-3-Clause
licences. Run once when upgrading; the built file is committed.

    python -m tools.build_offline_plots_template
"""
from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}  # as dvc_render/vega.py
OUT = Path(__file__).resolve().parents[1] / ".dvc" / "plots" / "offline.html"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC plots</title>
    <!--
    Inlined so the page needs no network: {versions}, from the npm registry.
{licences}
    -->
{scripts}
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
        img {{ max-width: 100%; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def fetch(package: str, version: str, workdir: Path) -> tuple[str, str]:
    """The package's minified build and licence, from `npm pack`."""
    subprocess.run(["npm", "pack", "--silent", f"{package}@{version}"], cwd=workdir, check=True, capture_output=True)
    with tarfile.open(workdir / f"{package}-{version}.tgz") as tar:
        script = tar.extractfile(f"package/build/{package}.min.js").read().decode()
        licence = tar.extractfile("package/LICENSE").read().decode()
    assert "</script" not in script, f"{package} cannot be inlined as is"
    return script, licence


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        parts = {name: fetch(name, version, Path(tmp)) for name, version in PACKAGES.items()}
    scripts = "\n".join(f"    <script>/* {n}@{PACKAGES[n]} */\n{s}\n    </script>" for n, (s, _) in parts.items())
    licences = "\n".join(f"    {n}@{PACKAGES[n]}:\n{lic.replace('--', '- -')}" for n, (_, lic) in parts.items())
    versions = ", ".join(f"{n} {v}" for n, v in PACKAGES.items())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(PAGE.format(versions=versions, licences=licences, scripts=scripts), encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
