# ops/lib.sh — shared by ops/run and ops/test: package installation.
# Sourced, not executed.

# Debian packages, and what each is for (README "Dependencies" mirrors this).
CAIRN_BUILD_PACKAGES=(
  build-essential cmake ninja-build pkg-config   # toolchain
  liblmdb-dev lmdb-utils                         # the log and state stores (mdb_copy for auditors)
  libmsgpack-dev                                 # envelope and payload encoding
  libssl-dev                                     # SHA-256 hash chain, HMAC (JWT, Stripe)
  libjansson-dev                                 # JSON parsing and schemas
  libuv1-dev                                     # event loop (HTTP, timers)
  libhttp-parser-dev                             # HTTP/1.1 request parsing
)
CAIRN_TEST_PACKAGES=(
  libcmocka-dev                                  # unit tests
  json-schema-test-suite                         # the official JSON Schema tests
  clang-format                                   # formatting check
  curl jq                                        # integration tests over HTTP, JSON checks
  clang libclang-rt-14-dev                       # the HTTP fuzz target (libFuzzer)
  python3                                        # test helpers (geofence routes, the CIS reference reading)
  valgrind                                       # the memcheck stage (tests/memcheck)
)

# node and npm run the official `stripe` package that signs test webhooks.
# Any node >= 16 will do; Debian's is installed only when none is on PATH.
ensure_node() {
  command -v node >/dev/null && command -v npm >/dev/null && return 0
  ensure_packages nodejs npm
}

# Installs whatever of the given packages is missing. Idempotent: on a
# machine where everything is installed it touches nothing.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "ops: installing ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
