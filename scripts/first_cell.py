# Run anywhere: where the course's package is not installed (Colab, a fresh Jupyter), install it.
import importlib.util, pathlib, subprocess, sys
if importlib.util.find_spec("toylib") is None:
    COURSE_REPOSITORY = ""  # the course's git URL, e.g. https://github.com/<owner>/<repo>
    clone = next((p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents)
                  if (p / "toylib" / "__init__.py").is_file()), None)
    if clone is None and not COURSE_REPOSITORY:
        raise RuntimeError("toylib is not installed: pip install the course's repository")
    source = str(clone) if clone else f"git+{COURSE_REPOSITORY}"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", source], check=True)
    importlib.invalidate_caches()
