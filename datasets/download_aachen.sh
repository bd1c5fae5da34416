#!/usr/bin/env bash
# Download Aachen day-night v1.0 or v1.1 and lay it out for `xfeat-hloc aachen`.
# Run it on a machine with internet access (~25 GB with the v1.1 files):
#
#     bash datasets/download_aachen.sh 1.1 datasets/aachen_v1.1
#     bash datasets/download_aachen.sh 1.0 datasets/aachen
#
# Optional: NETVLAD=1 also fetches hloc's NetVLAD weights into
# $TORCH_HOME/hub/netvlad (for --retrieval netvlad); PAIRS=1 fetches hloc's
# published NetVLAD query pairs (for --retrieval-pairs).
# The data are under the dataset's own terms: see https://www.visuallocalization.net
set -euo pipefail

version="${1:?usage: download_aachen.sh 1.0|1.1 TARGET_DIR}"
target="${2:?usage: download_aachen.sh 1.0|1.1 TARGET_DIR}"
url="https://data.ciirc.cvut.cz/public/projects/2020VisualLocalization/Aachen-Day-Night/"
mkdir -p "$target"

case "$version" in
  1.0) reject="index.html*,aachen_v1_1.zip" ;;
  1.1) reject="index.html*" ;;
  *) echo "version must be 1.0 or 1.1" >&2; exit 2 ;;
esac

# Mirror the dataset folder (images zip, 3D-models/, queries/, aachen.db, ...).
wget -c -r -np -nH -R "$reject" --cut-dirs=4 "$url" -P "$target"

# images_upright/{db,query} from the images zip.
unzip -n -q "$target/images/database_and_query_images.zip" -d "$target"
if [ "$version" = "1.1" ]; then
  # v1.1 adds database images, the COLMAP model 3D-models/aachen_v_1_1 and the
  # v1.1 query list; its files replace the v1.0 ones of the same name.
  unzip -o -q "$target/aachen_v1_1.zip" -d "$target"
fi

if [ "${PAIRS:-0}" = "1" ]; then
  sub=$([ "$version" = "1.1" ] && echo aachen_v1.1 || echo aachen)
  wget -c -O "$target/pairs-query-netvlad50.txt" \
    "https://raw.githubusercontent.com/cvg/Hierarchical-Localization/master/pairs/$sub/pairs-query-netvlad50.txt"
fi
if [ "${NETVLAD:-0}" = "1" ]; then
  hub="${TORCH_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/torch}/hub/netvlad"
  mkdir -p "$hub"
  wget -c -O "$hub/VGG16-NetVLAD-Pitts30K.mat" \
    "https://cvg-data.inf.ethz.ch/hloc/netvlad/Pitts30K_struct.mat"
fi

# Check the layout (lists everything that is missing, if anything).
python -c "
import sys
from xfeat_hloc.errors import UserError
from xfeat_hloc.pipelines.aachen import check_layout
try:
    layout = check_layout('$target', '$version')
except UserError as error:
    sys.exit(str(error))
print(f'{layout.root}: Aachen v$version layout OK, {len(layout.queries)} queries.')
" || echo "(xfeat_hloc not importable here: check the layout later with xfeat-hloc aachen)"
echo "Next: xfeat-hloc aachen --version $version --dataset $target --outputs outputs/$(basename "$target")"
