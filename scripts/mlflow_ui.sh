#!/usr/bin/env bash
# Open the MLflow UI for analogtrain runs, on 127.0.0.1 only.
#   scripts/mlflow_ui.sh                       # store outputs/mlflow.db of the current directory
#   scripts/mlflow_ui.sh path/to/mlflow.db     # another sqlite store
#   PORT=5055 scripts/mlflow_ui.sh             # another port (default 5000)
# Then browse http://127.0.0.1:${PORT}. Artifacts (plots, configs) are read from the paths recorded in the
# store (outputs/mlartifacts/ next to the DB), so run this on the machine that holds them.
set -euo pipefail
db="${1:-outputs/mlflow.db}"
port="${PORT:-5000}"
if [[ ! -f "$db" ]]; then
  echo "mlflow_ui: no MLflow store at '$db' (run analogtrain first, or pass the path of a mlflow.db)" >&2
  exit 1
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mlflow="$here/.venv/bin/mlflow"
[[ -x "$mlflow" ]] || mlflow="$(command -v mlflow)"
db_abs="$(cd "$(dirname "$db")" && pwd)/$(basename "$db")"
echo "MLflow UI for sqlite:///$db_abs on http://127.0.0.1:$port (Ctrl-C to stop)"
exec "$mlflow" ui --backend-store-uri "sqlite:///$db_abs" --host 127.0.0.1 --port "$port" --workers 1
