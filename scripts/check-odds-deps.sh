#!/usr/bin/env bash
# The odds write path is what application writers link: built without the `daemon` feature,
# partwarden must depend directly on these crates and no others (issue "One plan, many
# renderers": a crate an application writer can afford). Prints the tree it checked.
set -euo pipefail
cd "$(dirname "$0")/.."
allowed="bytes chrono serde serde_json thiserror tokio-postgres"
cargo check --quiet --lib --no-default-features
direct=$(cargo tree --no-default-features -e normal --depth 1 --prefix none \
  | awk 'NR > 1 { print $1 }' | sort -u)
echo "odds library, direct dependencies: $(echo $direct)"
for d in $direct; do
  case " $allowed " in
    *" $d "*) ;;
    *) echo "check-odds-deps: the odds library depends on $d, which is not one of: $allowed" >&2; exit 1 ;;
  esac
done
echo "odds library, all crates compiled: $(cargo tree --no-default-features -e normal --prefix none | awk '{print $1}' | sort -u | wc -l)"
