#!/bin/sh
# Installs what pgnomad's Postgres image runs: PostgreSQL <major>, Patroni (Consul and etcd
# DCS), pgBackRest, PgBouncer and postgres_exporter, into a Debian system, as root.
#
#   install.sh --source pgdg   --major 16   # the PGDG apt repository: any supported major
#   install.sh --source debian --major 15   # the Debian release's own postgresql-<major> only
#
# packs/image/Dockerfile runs it (--source pgdg); the tests run the same script on a
# debootstrapped Debian (--source debian), so the image has one recipe.
#
# Debian's auto-created cluster is disabled before PostgreSQL is installed: Patroni runs
# initdb itself on the member's volume (/var/lib/postgresql/data).
set -eu

usage() {
    echo "usage: $0 --source pgdg|debian --major <postgres major version>" >&2
    exit 2
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

source=""
major=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --source) [ "$#" -ge 2 ] || usage; source="$2"; shift 2 ;;
        --major) [ "$#" -ge 2 ] || usage; major="$2"; shift 2 ;;
        -h | --help) usage ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage ;;
    esac
done
case "$source" in
    pgdg | debian) ;;
    *) echo "install.sh: --source must be pgdg or debian, not '${source}'" >&2; usage ;;
esac
case "$major" in
    '' | *[!0-9]*) echo "install.sh: --major must be a Postgres major version such as 16, not '${major}'" >&2; usage ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root"
[ -r /etc/os-release ] || die "/etc/os-release is missing: not a Debian system?"
# shellcheck source=/dev/null
codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
[ -n "$codename" ] || die "/etc/os-release has no VERSION_CODENAME"

export DEBIAN_FRONTEND=noninteractive
# Keep the createcluster.conf written below when postgresql-common ships its own.
apt_install() {
    apt-get install -y --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

# No daemon is started by a package's postinst (there is no init in an image build).
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d

# The postgres user with fixed ids (postgres.uid/gid in the stack file, 999:999 by default):
# Nomad writes each task's secret files with those numeric owners, and Debian's package
# would otherwise pick whatever ids are free.
if ! getent group postgres > /dev/null; then
    groupadd --system --gid 999 postgres
fi
if ! getent passwd postgres > /dev/null; then
    useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# No cluster on install: written before postgresql-common is installed.
install -d /etc/postgresql-common
echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf

apt-get update
apt_install ca-certificates

if [ "$source" = pgdg ]; then
    apt_install curl
    install -d /usr/share/postgresql-common/pgdg
    curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${codename}-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list
    apt-get update
    apt-get purge -y --auto-remove curl
elif ! apt-cache show "postgresql-${major}" > /dev/null 2>&1; then
    die "Debian ${codename} has no postgresql-${major}; use --source pgdg for other major versions"
fi

apt_install \
    "postgresql-${major}" \
    patroni python3-consul python3-etcd python3-psycopg2 \
    pgbackrest pgbouncer prometheus-postgres-exporter \
    util-linux bash procps iproute2

grep -qx 'create_main_cluster = false' /etc/postgresql-common/createcluster.conf \
    || die "postgresql-common replaced /etc/postgresql-common/createcluster.conf"
[ -x "/usr/lib/postgresql/${major}/bin/postgres" ] || die "postgresql-${major} did not install /usr/lib/postgresql/${major}/bin/postgres"
[ ! -e "/etc/postgresql/${major}/main" ] || die "a ${major}/main cluster was created despite create_main_cluster = false"
[ "$(id -u postgres):$(id -g postgres)" = "999:999" ] || die "the postgres user is not 999:999"

# Postgres refuses to run as root; the volume mount points must be the postgres user's.
install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
install -d -o postgres -g postgres -m 0750 /var/lib/pgbackrest

rm -f /usr/sbin/policy-rc.d
apt-get clean
rm -rf /var/lib/apt/lists/*
