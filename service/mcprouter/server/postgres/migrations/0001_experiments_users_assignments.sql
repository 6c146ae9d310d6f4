-- Experiments, user profiles and sticky assignments (PostgreSQL 12+).
-- Applied once, inside a transaction, by mcprouter.server.migrations.

CREATE TABLE experiments (
    experiment_id text PRIMARY KEY,
    name          text NOT NULL DEFAULT '',
    description   text NOT NULL DEFAULT '',
    -- ExperimentStatus without its prefix, lower case; UNSPECIFIED is never stored.
    status        text NOT NULL
                  CHECK (status IN ('draft', 'running', 'paused', 'completed')),
    -- Seeds the assignment hash; set on create and never changed.
    salt          text NOT NULL CHECK (salt <> ''),
    -- [{"name": "control", "weight": 50}, ...] in the experiment's order.
    variants      jsonb NOT NULL
                  CHECK (jsonb_typeof(variants) = 'array' AND jsonb_array_length(variants) > 0),
    -- Optimistic-concurrency token: 1 on create, +1 per update.
    version       bigint NOT NULL CHECK (version >= 1),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_profiles (
    user_id    text PRIMARY KEY,
    -- {"country": "DE", ...}: string keys and string values.
    attributes jsonb NOT NULL DEFAULT '{}'::jsonb
               CHECK (jsonb_typeof(attributes) = 'object'),
    version    bigint NOT NULL CHECK (version >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The first assignment of a user in an experiment; never updated (sticky).
-- user_id does not reference user_profiles: users are assigned before, or
-- without, having a profile.
CREATE TABLE assignments (
    experiment_id text NOT NULL REFERENCES experiments (experiment_id) ON DELETE CASCADE,
    user_id       text NOT NULL,
    variant       text NOT NULL,
    bucket        integer NOT NULL CHECK (bucket >= 0 AND bucket < 10000),
    assigned_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_id, user_id)
);

-- "Everything about this user" (invalidation, exports) without a full scan.
CREATE INDEX assignments_user_id_idx ON assignments (user_id);
