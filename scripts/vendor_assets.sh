#!/usr/bin/env bash
# Copy the browser assets the book site needs into DEST (the Makefile passes build/vendor).
#
# The site must work with no third-party host: _config.yml points sphinxcontrib-mermaid and
# myst-nb's widget loader at these copies, and html_static_path serves DEST as _static/.
# Only the files a page actually loads are copied (about 7 MB of the 250 MB node_modules):
#
#   DEST/mermaid/mermaid.esm.min.mjs            ES module entry (sphinxcontrib-mermaid imports it)
#   DEST/mermaid/chunks/mermaid.esm.min/*.mjs   the chunks it imports lazily, per diagram type
#   DEST/jupyter-widgets/embed-amd.js           ipywidgets HTML manager (AMD, controls 5 + 7)
#   DEST/jupyter-widgets/*.woff2, *.woff        Font Awesome files its CSS loads for widget icons
#   DEST/jupyter-widgets/require.js             RequireJS, which embed-amd.js needs
#
# Source maps are left out. Versions are pinned exactly in package.json / package-lock.json.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 DEST   (e.g. build/vendor)" >&2
    exit 2
fi

mkdir -p "$1"
dest=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

command -v npm >/dev/null || { echo "vendor_assets.sh: npm (Node 20) is required" >&2; exit 1; }

# Exactly the locked tree; no install scripts run, nothing is written back to the lockfile.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null

nm=node_modules
rm -rf "$dest/mermaid" "$dest/jupyter-widgets"
mkdir -p "$dest/mermaid/chunks/mermaid.esm.min" "$dest/jupyter-widgets"

# Mermaid: the entry imports ./chunks/mermaid.esm.min/<chunk>.mjs, so keep that layout.
cp "$nm/mermaid/dist/mermaid.esm.min.mjs" "$nm/mermaid/LICENSE" "$dest/mermaid/"
find "$nm/mermaid/dist/chunks/mermaid.esm.min" -maxdepth 1 -name '*.mjs' \
    -exec cp {} "$dest/mermaid/chunks/mermaid.esm.min/" \;

# Widgets: embed-amd.js sets webpack's public path to its own folder, and its Font Awesome
# CSS asks for <hash>.woff2 (then .woff) from there; .eot/.ttf/.svg are for old browsers.
hm="$nm/@jupyter-widgets/html-manager/dist"
cp "$hm/embed-amd.js" "$dest/jupyter-widgets/"
cp "$hm/embed.js.LICENSE.txt" "$dest/jupyter-widgets/LICENSE.txt"
cp "$hm"/*.woff2 "$hm"/*.woff "$dest/jupyter-widgets/"
# The requirejs package ships only the unminified build (its licence is in the header).
cp "$nm/requirejs/require.js" "$dest/jupyter-widgets/require.js"

# Fail loudly if a package moved a file (a version bump that changes the layout).
for f in mermaid/mermaid.esm.min.mjs jupyter-widgets/embed-amd.js jupyter-widgets/require.js; do
    [ -s "$dest/$f" ] || { echo "vendor_assets.sh: missing $f" >&2; exit 1; }
done
echo "vendored web assets: $(du -sh "$dest" | cut -f1) in $1"
