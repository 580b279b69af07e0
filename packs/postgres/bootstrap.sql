[# psql script run as the superuser on the primary after bootstrap and on every promotion.
   Idempotent: roles and databases are created when missing, a password is set again only
   when the role's verifier does not match its secret, and functions are replaced, so rotated
   secrets and a newer pack apply. Names are validated identifiers. #]
[% set databases = ["postgres", "template1"] + (stack.databases | map(attribute="name") | list) %]
\set ON_ERROR_STOP on
-- Without a synchronous standby (strict mode, just promoted) a commit would wait forever.
SET synchronous_commit = local;
SET statement_timeout = 0;

-- Setting an unchanged password again would give it a new SCRAM salt. PgBouncer logs in to the
-- server with keys it derived from its clients' logins under the old salt, so every server login
-- for a client still connected across a promotion would then fail until the client reconnects.
-- So a password is set only when the stored verifier does not verify the secret (RFC 5802:
-- PBKDF2 over HMAC-SHA-256, which PostgreSQL has no function for; sha256() is enough). A
-- password outside ASCII that SASLprep would change never verifies and is simply set again.
CREATE FUNCTION pg_temp.password_is(role_name name, password text) RETURNS boolean
    LANGUAGE plpgsql STRICT AS $fn$
DECLARE
    verifier text;
    parts text[];
    salted bit(256);
    block bytea;
    key bytea;
    inner_pad bytea;
    outer_pad bytea;
    salted_bytes bytea := '';
BEGIN
    SELECT rolpassword INTO verifier FROM pg_catalog.pg_authid WHERE rolname = role_name;
    IF verifier IS NULL THEN
        RETURN false;
    ELSIF verifier LIKE 'md5%' THEN
        RETURN verifier = 'md5' || md5(password || role_name);
    END IF;
    -- SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (RFC 5802, PBKDF2 with HMAC-SHA-256)
    parts := regexp_match(verifier, '^SCRAM-SHA-256\$([0-9]+):([^$:]+)\$([^:]+):(.+)$');
    IF parts IS NULL THEN
        RETURN false;
    END IF;
    key := convert_to(password, 'UTF8');
    IF length(key) > 64 THEN key := sha256(key); END IF;
    key := key || decode(repeat('00', 64 - length(key)), 'hex');
    inner_pad := key; outer_pad := key;
    FOR i IN 0..63 LOOP
        inner_pad := set_byte(inner_pad, i, get_byte(key, i) # 54);
        outer_pad := set_byte(outer_pad, i, get_byte(key, i) # 92);
    END LOOP;
    block := sha256(outer_pad || sha256(inner_pad || decode(parts[2], 'base64') || '\x00000001'::bytea));
    salted := ('x' || encode(block, 'hex'))::bit(256);
    FOR i IN 2..parts[1]::int LOOP
        block := sha256(outer_pad || sha256(inner_pad || block));
        salted := salted # ('x' || encode(block, 'hex'))::bit(256);
    END LOOP;
    FOR i IN 0..31 LOOP
        salted_bytes := salted_bytes || decode(lpad(to_hex(substring(salted FROM i * 8 + 1 FOR 8)::int), 2, '0'), 'hex');
    END LOOP;
    key := salted_bytes || decode(repeat('00', 32), 'hex');
    inner_pad := key; outer_pad := key;
    FOR i IN 0..63 LOOP
        inner_pad := set_byte(inner_pad, i, get_byte(key, i) # 54);
        outer_pad := set_byte(outer_pad, i, get_byte(key, i) # 92);
    END LOOP;
    RETURN encode(sha256(sha256(outer_pad || sha256(inner_pad || convert_to('Client Key', 'UTF8')))), 'base64') = parts[3]
        AND encode(sha256(outer_pad || sha256(inner_pad || convert_to('Server Key', 'UTF8'))), 'base64') = parts[4];
END
$fn$;

DO $$
BEGIN
    CREATE ROLE pgbouncer_auth;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
ALTER ROLE pgbouncer_auth WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT;
SELECT format('ALTER ROLE %I PASSWORD %L', 'pgbouncer_auth', [[ rt.secrets.pgbouncer_auth_password | sql ]])
    WHERE NOT pg_temp.password_is('pgbouncer_auth', [[ rt.secrets.pgbouncer_auth_password | sql ]])
\gexec

-- pg_rewind's role: it reads the primary's files over TCP, where the superuser may not log
-- in (pg_hba), so it gets exactly the functions pg_rewind calls (PostgreSQL's pg_rewind docs).
DO $$
BEGIN
    CREATE ROLE pgnomad_rewind;
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
ALTER ROLE pgnomad_rewind WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
SELECT format('ALTER ROLE %I PASSWORD %L', 'pgnomad_rewind', [[ rt.secrets.rewind_password | sql ]])
    WHERE NOT pg_temp.password_is('pgnomad_rewind', [[ rt.secrets.rewind_password | sql ]])
\gexec
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
ALTER ROLE pgnomad_monitor WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
SELECT format('ALTER ROLE %I PASSWORD %L', 'pgnomad_monitor', [[ rt.secrets.monitor_password | sql ]])
    WHERE NOT pg_temp.password_is('pgnomad_monitor', [[ rt.secrets.monitor_password | sql ]])
\gexec
GRANT pg_monitor TO pgnomad_monitor;
[% endif %]
[% for user in stack.users %]

DO $$
BEGIN
    CREATE ROLE [[ user ]];
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
ALTER ROLE [[ user ]] WITH LOGIN;
SELECT format('ALTER ROLE %I PASSWORD %L', '[[ user ]]', [[ rt.secrets["password_" ~ user] | sql ]])
    WHERE NOT pg_temp.password_is('[[ user ]]', [[ rt.secrets["password_" ~ user] | sql ]])
\gexec
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
