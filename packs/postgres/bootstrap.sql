[# psql script run as the superuser on the primary after bootstrap and on every promotion.
   Idempotent: roles and databases are created when missing, passwords and functions are
   set again, so rotated secrets and a newer pack apply. Names are validated identifiers. #]
[% set databases = ["postgres", "template1"] + (stack.databases | map(attribute="name") | list) %]
\set ON_ERROR_STOP on
-- Without a synchronous standby (strict mode, just promoted) a commit would wait forever.
SET synchronous_commit = local;
SET statement_timeout = 0;

DO $$
BEGIN
    CREATE ROLE pgbouncer_auth;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
ALTER ROLE pgbouncer_auth WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT
    PASSWORD [[ rt.secrets.pgbouncer_auth_password | sql ]];

-- pg_rewind's role: it reads the primary's files over TCP, where the superuser may not log
-- in (pg_hba), so it gets exactly the functions pg_rewind calls (PostgreSQL's pg_rewind docs).
DO $$
BEGIN
    CREATE ROLE pgnomad_rewind;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
ALTER ROLE pgnomad_rewind WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    PASSWORD [[ rt.secrets.rewind_password | sql ]];
GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO pgnomad_rewind;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO pgnomad_rewind;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO pgnomad_rewind;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO pgnomad_rewind;
[% if stack.exporter %]

-- postgres_exporter reads statistics as pg_monitor, never as the superuser.
DO $$
BEGIN
    CREATE ROLE pgnomad_monitor;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
ALTER ROLE pgnomad_monitor WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    PASSWORD [[ rt.secrets.monitor_password | sql ]];
GRANT pg_monitor TO pgnomad_monitor;
[% endif %]
[% for user in stack.users %]

DO $$
BEGIN
    CREATE ROLE [[ user ]];
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
ALTER ROLE [[ user ]] WITH LOGIN PASSWORD [[ rt.secrets["password_" ~ user] | sql ]];
[% endfor %]
[% for database in stack.databases %]

SELECT 'CREATE DATABASE [[ database.name ]] OWNER [[ database.owner ]]'
    WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = [[ database.name | sql ]])
\gexec
ALTER DATABASE [[ database.name ]] OWNER TO [[ database.owner ]];
[% endfor %]
[#
   PgBouncer 1.18 runs auth_query in the database the client asked for (it has no
   auth_dbname), so every database clients reach needs the function; template1 passes it on
   to databases created later. It hides superusers, replication roles and pgnomad's own
   roles (pg_rewind's, the exporter's): they cannot log in through PgBouncer.
#]
[% for database in databases %]

\connect [[ database ]]
SET synchronous_commit = local;
SET statement_timeout = 0;
CREATE SCHEMA IF NOT EXISTS pgbouncer;
REVOKE ALL ON SCHEMA pgbouncer FROM PUBLIC;
GRANT USAGE ON SCHEMA pgbouncer TO pgbouncer_auth;
CREATE OR REPLACE FUNCTION pgbouncer.get_auth(username text)
    RETURNS TABLE (usename name, passwd text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.usename, s.passwd
    FROM pg_catalog.pg_shadow AS s
    WHERE s.usename = get_auth.username AND NOT s.usesuper AND NOT s.userepl
        AND s.usename NOT IN ('pgnomad_rewind', 'pgnomad_monitor')
$$;
REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO pgbouncer_auth;
[% endfor %]
