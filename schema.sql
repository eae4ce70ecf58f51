-- statepipe schema, version 1.
-- Applied automatically (under an advisory lock) by statepipe.store.database; the version row in
-- statepipe.schema_version lets a later release migrate instead of re-creating.
-- Hot rows (runs, steps) are kept small; outputs live once per attempt in statepipe.attempts.

CREATE SCHEMA IF NOT EXISTS statepipe;

CREATE TABLE IF NOT EXISTS statepipe.schema_version (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS statepipe.runs (
    id               text PRIMARY KEY,
    workflow         text NOT NULL,
    workflow_ref     text NOT NULL,          -- how to load the definition again: "path.py:object"
    state            text NOT NULL,
    input            jsonb NOT NULL,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    last_seq         bigint NOT NULL DEFAULT 0,
    -- ownership: one executor at a time; fencing_token grows with every claim
    owner            text,
    lease_expires_at timestamptz,
    fencing_token    bigint NOT NULL DEFAULT 0,
    -- a control command for the owner: pause, pause_now, cancel, cancel_compensate
    requested        text,
    dry_run          boolean NOT NULL DEFAULT false, -- LLM calls answered by the simulated model
    no_cache         boolean NOT NULL DEFAULT false, -- never reuse cached outputs of other runs
    fingerprint      jsonb NOT NULL DEFAULT '{}',    -- step name -> fingerprint of its code
    forked_from      text,                           -- the run whose outputs this one started from
    batch_id         text,
    batch_index      integer
);
CREATE INDEX IF NOT EXISTS runs_created_idx ON statepipe.runs (created_at DESC);
CREATE INDEX IF NOT EXISTS runs_id_prefix_idx ON statepipe.runs (id text_pattern_ops); -- ids by prefix
CREATE INDEX IF NOT EXISTS runs_state_created_idx ON statepipe.runs (state, created_at DESC);
CREATE INDEX IF NOT EXISTS runs_workflow_created_idx ON statepipe.runs (workflow, created_at DESC);
-- what workers scan: the few runs that still want an executor
CREATE INDEX IF NOT EXISTS runs_claimable_idx ON statepipe.runs (created_at)
    WHERE state IN ('pending', 'running') OR requested IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS runs_batch_idx ON statepipe.runs (batch_id, batch_index)
    WHERE batch_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS statepipe.steps (
    run_id       text NOT NULL REFERENCES statepipe.runs (id) ON DELETE CASCADE,
    name         text NOT NULL,
    item         text NOT NULL DEFAULT '',   -- '' for a plain step, the item key for a fan-out child
    position     integer NOT NULL DEFAULT 0, -- the step's place in the workflow, for display
    item_index   integer,                    -- position of a fan-out child in its parent's list
    fanout       boolean NOT NULL DEFAULT false, -- a map_over parent: its output is its children's
    compensates  text,                       -- set on "<step>:compensate" rows: the step they undo
    overrides    jsonb,                      -- input values set for this step by rerun --set
    feedback     text,                       -- what a user asked of this step (rerun, feedback)
    state        text NOT NULL,
    depends_on   text[] NOT NULL DEFAULT '{}',
    attempt      integer NOT NULL DEFAULT 0, -- number of the current attempt (0: none yet)
    started_at   timestamptz,
    finished_at  timestamptz,
    error        text,
    next_attempt_at timestamptz,
    PRIMARY KEY (run_id, name, item)
);

CREATE TABLE IF NOT EXISTS statepipe.attempts (
    run_id       text NOT NULL,
    step         text NOT NULL,
    item         text NOT NULL DEFAULT '',
    number       integer NOT NULL,
    state        text NOT NULL,              -- running, succeeded, failed, abandoned
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    error        text,
    output       jsonb,
    usage        jsonb,                      -- LLM calls of this attempt: tokens, cost, latency
    cache_key    text,                       -- inputs + upstream outputs + code, for reuse by any run
    cached_from  jsonb,                      -- {run_id, step, item, number} when reused from the cache
    PRIMARY KEY (run_id, step, item, number),
    FOREIGN KEY (run_id, step, item) REFERENCES statepipe.steps (run_id, name, item) ON DELETE CASCADE
);

CREATE INDEX IF NOT EXISTS attempts_cache_idx ON statepipe.attempts (cache_key, finished_at DESC)
    WHERE cache_key IS NOT NULL AND state = 'succeeded';
CREATE INDEX IF NOT EXISTS runs_forked_from_idx ON statepipe.runs (forked_from) WHERE forked_from IS NOT NULL;

CREATE TABLE IF NOT EXISTS statepipe.events (
    run_id   text NOT NULL REFERENCES statepipe.runs (id) ON DELETE CASCADE,
    seq      bigint NOT NULL,
    ts       timestamptz NOT NULL,
    type     text NOT NULL,
    step     text,
    item     text,
    attempt  integer,
    data     jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, seq)
);

-- Appends events to runs under their fencing tokens and wakes listeners, in the caller's
-- transaction: one call for a whole batch of runs. Run i's events are those whose p_block is i,
-- p_pos their order; its seqs end at the returned lasts[i]. A stale owner (token moved on) gets
-- SQLSTATE SP001 and the whole transaction rolls back, so nothing it wrote is kept.
CREATE OR REPLACE FUNCTION statepipe.append_events(
    p_runs text[], p_fences bigint[], p_counts integer[],
    p_block integer[], p_pos integer[], p_ts timestamptz[], p_type text[], p_step text[],
    p_item text[], p_attempt integer[], p_data text[]
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    lasts bigint[] := '{}';
    v_last bigint;
BEGIN
    FOR i IN 1 .. cardinality(p_runs) LOOP
        UPDATE statepipe.runs SET last_seq = last_seq + p_counts[i], updated_at = now()
         WHERE id = p_runs[i] AND fencing_token = p_fences[i]
        RETURNING last_seq INTO v_last;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'lease lost on run %', p_runs[i] USING ERRCODE = 'SP001';
        END IF;
        lasts := lasts || v_last;
        PERFORM pg_notify('statepipe_' || replace(p_runs[i], '-', ''), v_last::text);
    END LOOP;
    INSERT INTO statepipe.events (run_id, seq, ts, type, step, item, attempt, data)
    SELECT p_runs[e.block], lasts[e.block] - p_counts[e.block] + e.pos, e.ts, e.type, e.step, e.item,
           e.attempt, e.data::jsonb
      FROM unnest(p_block, p_pos, p_ts, p_type, p_step, p_item, p_attempt, p_data)
           AS e(block, pos, ts, type, step, item, attempt, data);
    RETURN lasts;
END $$;

INSERT INTO statepipe.schema_version (version) VALUES (1) ON CONFLICT DO NOTHING;
