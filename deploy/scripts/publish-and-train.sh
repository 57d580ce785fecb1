#!/bin/sh
# The daily knowledge job: synthesise (or take) logs, pre-train the extractor, export the knowledge bundle,
# publish it to GKC as a new version, then train the downstream model against exactly that version and
# make it the ranker's current model. Used by the compose `trainer` service, the k8s CronJob and `make up`.
#
# Environment (defaults fit the compose network):
#   GKC_API_TOKEN      bearer token for publishing (required, never defaulted)
#   KEEP_GKC_URL       GKC REST base URL            (http://gkc:8081)
#   KEEP_GKC_ADDR      GKC gRPC address             (gkc:50051)
#   KEEP_WORK_DIR      scratch space for data, extractor and bundle   (/work)
#   KEEP_MODELS_DIR    where models go; $KEEP_MODELS_DIR/current is the ranker's model  (/models)
#   KEEP_SCALE         synthetic data scale: tiny|small|medium       (tiny)
#   KEEP_SUPER_LOG / KEEP_TRAIN_LOG   real logs; when both are set the synthetic step is skipped
#   KEEP_PREV_MODEL    warm start: yesterday's model (default: $KEEP_MODELS_DIR/current when it exists)
#   KEEP_BIN / KEEP_PYTHON   the `keep` and `python` to run (default: the ones on PATH)
set -eu

: "${GKC_API_TOKEN:?set GKC_API_TOKEN}"
GKC_URL="${KEEP_GKC_URL:-http://gkc:8081}"
GKC_ADDR="${KEEP_GKC_ADDR:-gkc:50051}"
WORK="${KEEP_WORK_DIR:-/work}"
MODELS="${KEEP_MODELS_DIR:-/models}"
SCALE="${KEEP_SCALE:-tiny}"
KEEP="${KEEP_BIN:-keep}"
PYTHON="${KEEP_PYTHON:-python}"

mkdir -p "$WORK" "$MODELS"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
run="$WORK/run-$stamp"

if [ -n "${KEEP_SUPER_LOG:-}" ] && [ -n "${KEEP_TRAIN_LOG:-}" ]; then
    super="$KEEP_SUPER_LOG"
    train="$KEEP_TRAIN_LOG"
else
    echo "publish-and-train: synthesising a $SCALE world" >&2
    "$KEEP" data synth --scale "$SCALE" --out "$run/data"
    super="$run/data/super.parquet"
    train="$run/data/train.parquet"
fi

echo "publish-and-train: pre-training the extractor" >&2
"$KEEP" pretrain --super "$super" --out "$run/extractor" --strategy serving
echo "publish-and-train: exporting the knowledge bundle" >&2
"$KEEP" export --extractor "$run/extractor" --out "$run/bundle"
echo "publish-and-train: publishing to $GKC_URL" >&2
# The token travels in the environment (GKC_API_TOKEN), not on the command line where `ps` shows it.
export GKC_API_TOKEN
version="$("$KEEP" publish "$run/bundle" --gkc-api "$GKC_URL" --no-progress | tail -n 1)"
case "$version" in
    '' | *[!0-9]*) echo "publish-and-train: keep publish printed '$version', not a version number" >&2; exit 1 ;;
esac
echo "publish-and-train: published knowledge version $version" >&2

prev="${KEEP_PREV_MODEL:-}"
if [ -z "$prev" ] && [ -e "$MODELS/current" ]; then
    prev="$MODELS/current"
fi
model="$MODELS/model-v$version-$stamp"
echo "publish-and-train: training the downstream model on version $version" >&2
if [ -n "$prev" ]; then
    "$KEEP" train --train "$train" --gkc "$GKC_ADDR" --knowledge-version "$version" --out "$model" --init "$prev"
else
    "$KEEP" train --train "$train" --gkc "$GKC_ADDR" --knowledge-version "$version" --out "$model"
fi

# The ranker's behaviour-sequence store gets the log's clicks (RANKER_FEATURES_REDIS_URL, else the ranker's
# embedded store under RANKER_DATA_DIR); rerunning adds nothing twice, live events keep arriving meanwhile.
"$PYTHON" -m ranker.features "$train"

# Switch the ranker's model atomically: a new symlink renamed over the old one.
ln -sfn "$(basename "$model")" "$MODELS/.current.new"
mv -Tf "$MODELS/.current.new" "$MODELS/current"
rm -rf "$run/extractor" "$run/bundle"
echo "publish-and-train: $MODELS/current -> $(basename "$model") (knowledge version $version)" >&2
