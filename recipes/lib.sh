# Shared by every recipe (source it, then call run_recipe with the recipe's overrides).
#
#   DATA_DIR   folder with the prepared parquet files, as seen by the machine that trains
#              (default: ~/data/lambda_grpo; see README "Reproducing the paper")
#   LAUNCHER   local   (default) python -m lambda_grpo.main on this machine
#              cluster launch/submit: `ray job submit` to the Ray cluster (see README "Run on a cluster")
#
# The recipe's own overrides come first and the caller's "$@" last, so any verl or lambda_grpo key
# can still be overridden from the command line.
set -euo pipefail

RECIPES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

run_recipe() {
    local data_dir="${DATA_DIR:-$HOME/data/lambda_grpo}"
    local overrides=("data.train_files=$data_dir/train.parquet" "data.val_files=$data_dir/val.parquet" "$@")
    case "${LAUNCHER:-local}" in
        local) exec python3 -m lambda_grpo.main "${overrides[@]}" ;;
        cluster) exec "$RECIPES_DIR/../launch/submit" -- "${overrides[@]}" ;;
        *) echo "LAUNCHER must be 'local' or 'cluster', got '${LAUNCHER}'" >&2; return 2 ;;
    esac
}
