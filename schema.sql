-- statepipe schema, version 11.
-- Applied automatically (under an advisory lock) by statepipe.store.database. Every statement is
-- idempotent (IF NOT EXISTS, OR REPLACE), so a database at an older version is migrated by
-- applying this file again; the version row in statepipe.schema_version records where it is.
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
    batch_index      integer,
    result_step      text                            -- Workflow(result=...): the step whose output is the result
) WITH (fillfactor = 50);
ALTER TABLE statepipe.runs ADD COLUMN IF NOT EXISTS result_step text;  -- v1 databases
CREATE INDEX IF NOT EXISTS runs_created_idx ON statepipe.runs (created_at DESC);
CREATE INDEX IF NOT EXISTS runs_id_prefix_idx ON statepipe.runs (id text_pattern_ops); -- ids by prefix
CREATE INDEX IF NOT EXISTS runs_state_created_idx ON statepipe.runs (state, created_at DESC);
CREATE INDEX IF NOT EXISTS runs_workflow_created_idx ON statepipe.runs (workflow, created_at DESC);
-- what workers scan: the few runs that still want an executor
-- v7: waiting runs too (claimed once their wake_at comes), so the index says which of its version
DROP INDEX IF EXISTS statepipe.runs_claimable_idx;
CREATE INDEX IF NOT EXISTS runs_claimable_v7_idx ON statepipe.runs (created_at)
    WHERE state IN ('pending', 'running', 'waiting') OR requested IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS runs_batch_idx ON statepipe.runs (batch_id, batch_index)
    WHERE batch_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS statepipe.steps (
    run_id       text NOT NULL,
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
) WITH (fillfactor = 70);

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
    PRIMARY KEY (run_id, step, item, number)
);

-- v6: a failed attempt's traceback (the user's frames; statepipe's own trimmed)
ALTER TABLE statepipe.attempts ADD COLUMN IF NOT EXISTS traceback text;
-- v6: how long owners executed the run: closed intervals in active_s, the open one from
-- resumed_at (set when an owner starts or resumes it, closed when it lets go or is taken over)
ALTER TABLE statepipe.runs ADD COLUMN IF NOT EXISTS active_s float8 NOT NULL DEFAULT 0;
ALTER TABLE statepipe.runs ADD COLUMN IF NOT EXISTS resumed_at timestamptz;

-- v7: durable waits for a person's input (ctx.wait_for). A waiting step's row says what it waits
-- for ({name, schema, deadline}); the run, in state waiting, has no owner and wants one again at
-- wake_at (a value arrived: now; else the nearest deadline). Values sent to a run are kept by name,
-- one per name, whether or not a step waits for it yet.
ALTER TABLE statepipe.steps ADD COLUMN IF NOT EXISTS waiting_for jsonb;
ALTER TABLE statepipe.runs ADD COLUMN IF NOT EXISTS wake_at timestamptz;
CREATE TABLE IF NOT EXISTS statepipe.signals (
    run_id   text NOT NULL,
    name     text NOT NULL,
    value    jsonb NOT NULL,
    sent_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, name)
);

-- v8: child workflows (ctx.run_workflow): a run started by a step of another names its parent and
-- its key there, unique, so a parent resumed after a crash finds its child and never starts a
-- second; depth counts the generations, bounded (a cycle of workflows starting each other ends).
ALTER TABLE statepipe.runs ADD COLUMN IF NOT EXISTS parent_run text;
ALTER TABLE statepipe.runs ADD COLUMN IF NOT EXISTS parent_key text;
ALTER TABLE statepipe.runs ADD COLUMN IF NOT EXISTS depth integer NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX IF NOT EXISTS runs_parent_idx ON statepipe.runs (parent_run, parent_key)
    WHERE parent_run IS NOT NULL;

-- v9: distributed fan-outs (map_over steps with distribute=True): their children are claimed by any
-- worker, as runs are. The parent row holds how many of its children may run at once, across
-- all workers (`distribute`); a child holds its claim (`claimed_by`, its lease, and `claim_fence`,
-- which grows with every claim so a worker that lost its claim cannot commit). An attempt records
-- which process ran it (`worker`, an owner id).
ALTER TABLE statepipe.steps ADD COLUMN IF NOT EXISTS distribute integer;
ALTER TABLE statepipe.steps ADD COLUMN IF NOT EXISTS claim_fence bigint;
ALTER TABLE statepipe.steps ADD COLUMN IF NOT EXISTS claimed_by text;
ALTER TABLE statepipe.steps ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz;
ALTER TABLE statepipe.attempts ADD COLUMN IF NOT EXISTS worker text;
-- what claim_children scans: the running distributed fan-outs, their children still to run,
-- and the children held now (a fan-out's global limit counts those)
CREATE INDEX IF NOT EXISTS steps_distributing_idx ON statepipe.steps (run_id, name)
    WHERE distribute IS NOT NULL AND item = '' AND state = 'running';
CREATE INDEX IF NOT EXISTS steps_claimable_idx ON statepipe.steps (run_id, name, item_index)
    WHERE claim_fence IS NOT NULL AND state IN ('pending', 'waiting', 'running');
CREATE INDEX IF NOT EXISTS steps_claimed_idx ON statepipe.steps (run_id, name)
    WHERE claim_fence IS NOT NULL AND claimed_by IS NOT NULL;

CREATE INDEX IF NOT EXISTS attempts_cache_idx ON statepipe.attempts (cache_key, finished_at DESC)
    WHERE cache_key IS NOT NULL AND state = 'succeeded';
CREATE INDEX IF NOT EXISTS runs_forked_from_idx ON statepipe.runs (forked_from) WHERE forked_from IS NOT NULL;

CREATE TABLE IF NOT EXISTS statepipe.events (
    run_id   text NOT NULL,
    seq      bigint NOT NULL,
    ts       timestamptz NOT NULL,
    type     text NOT NULL,
    step     text,
    item     text,
    attempt  integer,
    data     jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, seq)
);

-- v3: events and attempts are written only by commit_changes, after its fencing-token UPDATE has
-- found and locked the run, and an attempt only for a step row of that run; a foreign key there
-- re-checked what the function guarantees, for about a quarter of its time on every commit.
ALTER TABLE statepipe.events DROP CONSTRAINT IF EXISTS events_run_id_fkey;
ALTER TABLE statepipe.attempts DROP CONSTRAINT IF EXISTS attempts_run_id_step_item_fkey;
-- v5: steps likewise: their rows are inserted only with their run (commit_changes, after the
-- fencing-token UPDATE that found it; fork_run, in the transaction that inserts it), and its
-- check cost a third of creating a batch's runs (200 W4 runs: 27 -> 18 ms). statepipe deletes
-- no runs; one deleted by hand leaves its steps, events and attempts, to delete by run_id.
ALTER TABLE statepipe.steps DROP CONSTRAINT IF EXISTS steps_run_id_fkey;
-- Hot rows get room on their page (fillfactor), so their many updates stay HOT: no index writes.
ALTER TABLE statepipe.runs SET (fillfactor = 50);
ALTER TABLE statepipe.steps SET (fillfactor = 70);

-- The engine's one write: a batch of changes to any number of runs, in the caller's statement
-- (so in one transaction). `p` holds:
--   new_runs:   runs to create first, pending with fence 1 (input: i, or ib for a big one);
--               an unowned one wakes the workers
--   runs:       [{id, fence, n}]  each run's fencing token and how many events it appends
--   events:     [{b, pos, ts, type, step, item, attempt, data}]  b: 1-based index into runs
--   run_writes: [{id, state, started_at, finished_at, error, clear_request, release, begin, input,
--                 fingerprint, wake_at, awaits}]  applied in order; `begin`: an owner starts
--                 executing it now; `awaits`: the input names a run going `waiting` waits for
--                 (a value already sent for one wakes it at once: a send never slips between)
--   new_steps, steps, attempts: step rows to insert, step rows to update, attempts that ended
--   (a part with nothing to write is left out)
--   values:     JSON values the attempts point at by index (o: output, u: usage), spliced in
--               by the client so no output is escaped twice
-- `big` holds the values too long to splice (pointed at with ob or ib, 1-based): taking
-- a megabyte back out of `p` would re-encode it, which costs about what parsing it did.
-- A stale owner (token moved on) gets SQLSTATE SP001 and the whole transaction rolls back, so
-- nothing it wrote is kept. Returns each run's last seq, in the order of `runs`.
-- The planner takes every jsonb_to_recordset for 100 rows, and for a table of a few thousand rows
-- would rather hash it whole than look 100 keys up; a batch names a handful of rows, so the plans
-- below are held to index lookups (a seq scan of steps on every commit grew with the database).
CREATE OR REPLACE FUNCTION statepipe.commit_changes(p jsonb, VARIADIC big jsonb[] DEFAULT '{}')
RETURNS bigint[] LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
    ids text[] := '{}';
    counts integer[] := '{}';
    lasts bigint[] := '{}';
    v_id text;
    w jsonb;
    n_held integer;
    released boolean;
    ids_held text[];
BEGIN
    IF p ? 'new_runs' THEN
        INSERT INTO statepipe.runs (id, workflow, workflow_ref, state, input, owner, lease_expires_at, fencing_token,
                                    batch_id, batch_index, dry_run, no_cache, fingerprint, forked_from, result_step,
                                    parent_run, parent_key, depth)
        SELECT n.id, n.workflow, n.workflow_ref, 'pending', coalesce(big[n.ib], p->'values'->n.i), n.owner,
               CASE WHEN n.owner IS NULL THEN NULL ELSE now() + make_interval(secs => n.lease_s) END, 1,
               n.batch_id, n.batch_index, n.dry_run, n.no_cache, n.fingerprint, n.forked_from, n.result_step,
               n.parent_run, n.parent_key, coalesce(n.depth, 0)
          FROM jsonb_to_recordset(p->'new_runs')
               AS n(id text, workflow text, workflow_ref text, i integer, ib integer, owner text, lease_s float8,
                    batch_id text, batch_index integer, dry_run boolean, no_cache boolean, fingerprint jsonb,
                    forked_from text, result_step text, parent_run text, parent_key text, depth integer);
        IF jsonb_path_exists(p->'new_runs', '$[*] ? (@.owner == null)') THEN
            PERFORM pg_notify('statepipe_runnable', p->'new_runs'->0->>'id');  -- store.RUNNABLE_CHANNEL
        END IF;
    END IF;
    IF jsonb_array_length(p->'runs') = 1 THEN  -- the common case: one run, one index lookup
        w := p->'runs'->0;
        UPDATE statepipe.runs SET last_seq = last_seq + (w->>'n')::integer, updated_at = now()
         WHERE id = w->>'id' AND (w->>'fence' IS NULL OR fencing_token = (w->>'fence')::bigint)
        RETURNING ARRAY[id], ARRAY[(w->>'n')::integer], ARRAY[last_seq] INTO ids, counts, lasts;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'lease lost on run %', w->>'id' USING ERRCODE = 'SP001';
        END IF;
    ELSE
        WITH bumped AS (
            UPDATE statepipe.runs r SET last_seq = r.last_seq + x.n, updated_at = now()
              FROM ROWS FROM (jsonb_to_recordset(p->'runs') AS (id text, fence bigint, n integer))
                   WITH ORDINALITY AS x(id, fence, n, ord)
             WHERE r.id = x.id AND (x.fence IS NULL OR r.fencing_token = x.fence)
            RETURNING x.ord, r.id, x.n, r.last_seq)
        SELECT coalesce(array_agg(b.id ORDER BY b.ord), '{}'), coalesce(array_agg(b.n ORDER BY b.ord), '{}'),
               coalesce(array_agg(b.last_seq ORDER BY b.ord), '{}')
          INTO ids, counts, lasts FROM bumped b;
        IF cardinality(ids) < jsonb_array_length(p->'runs') THEN
            SELECT x.id INTO v_id FROM jsonb_to_recordset(p->'runs') AS x(id text) WHERE x.id <> ALL (ids) LIMIT 1;
            RAISE EXCEPTION 'lease lost on run %', v_id USING ERRCODE = 'SP001';
        END IF;
    END IF;
    -- v9: a claimed fan-out child's changes (fence null: not the run's owner) are fenced by their
    -- claims instead; `release` ends the claim (the attempt is over); `start` (an attempt begins)
    -- also needs the run still running with no request pending (a cancel, a pause, or its owner's
    -- stop once the run is failing stops the children not yet started) and the fan-out still
    -- running (v11). The run's owner is told (store.CONTROL_CHANNEL), and the
    -- workers, since a claim let go frees a place.
    IF p ? 'claims' THEN
        WITH held AS (
            UPDATE statepipe.steps s
               SET claimed_by = CASE WHEN c.release THEN NULL ELSE s.claimed_by END,
                   lease_expires_at = CASE WHEN c.release THEN NULL ELSE s.lease_expires_at END
              FROM jsonb_to_recordset(p->'claims')
                   AS c(run_id text, name text, item text, fence bigint, release boolean, start boolean)
             WHERE s.run_id = c.run_id AND s.name = c.name AND s.item = c.item AND s.claim_fence = c.fence
               AND (NOT c.start OR EXISTS (SELECT 1 FROM statepipe.runs r WHERE r.id = c.run_id
                                            AND r.state = 'running' AND r.requested IS NULL)
                                AND EXISTS (SELECT 1 FROM statepipe.steps f WHERE f.run_id = c.run_id AND f.name = c.name
                                            AND f.item = '' AND f.state = 'running'))
            RETURNING s.run_id, s.name, s.item, c.release)
        SELECT count(*), coalesce(bool_or(release), false), array_agg(DISTINCT run_id),
               coalesce(jsonb_agg(jsonb_build_array(run_id, name, item)), '[]')
          INTO n_held, released, ids_held, w FROM held;
        IF n_held < jsonb_array_length(p->'claims') THEN
            SELECT jsonb_build_array(c.run_id, c.name, c.item)::text INTO v_id
              FROM jsonb_to_recordset(p->'claims') AS c(run_id text, name text, item text)
             WHERE NOT w @> jsonb_build_array(jsonb_build_array(c.run_id, c.name, c.item)) LIMIT 1;
            RAISE EXCEPTION 'claim lost: %', v_id USING ERRCODE = 'SP002';  -- store.CLAIM_LOST_SQLSTATE
        END IF;
        PERFORM pg_notify('statepipe_control', t.id || ':children') FROM unnest(ids_held) AS t(id);
        IF released THEN
            PERFORM pg_notify('statepipe_runnable', '');
        END IF;
    END IF;
    -- v6: one channel for every run ("<run id>:<last seq>"), so a server's one LISTEN serves all
    -- its streams; store.EVENTS_CHANNEL
    PERFORM pg_notify('statepipe_events', t.id || ':' || t.last::text) FROM unnest(ids, lasts) AS t(id, last);
    IF p ? 'events' THEN
        INSERT INTO statepipe.events (run_id, seq, ts, type, step, item, attempt, data)
        SELECT ids[e.b], lasts[e.b] - counts[e.b] + e.pos, e.ts, e.type, e.step, e.item, e.attempt,
               coalesce(e.data, '{}')
          FROM jsonb_to_recordset(p->'events')
               AS e(b integer, pos integer, ts timestamptz, type text, step text, item text, attempt integer, data jsonb);
    END IF;
    IF p ? 'run_writes' THEN
        FOR i IN 0 .. jsonb_array_length(p->'run_writes') - 1 LOOP
            w := p->'run_writes'->i;
            UPDATE statepipe.runs SET state = w->>'state',
                   active_s = active_s + CASE WHEN resumed_at IS NOT NULL
                       AND ((w->>'release')::boolean OR (w->>'begin')::boolean)
                       THEN extract(epoch FROM now() - resumed_at) ELSE 0 END,
                   resumed_at = CASE WHEN (w->>'begin')::boolean THEN now()
                       WHEN (w->>'release')::boolean THEN NULL ELSE resumed_at END,
                   started_at = coalesce((w->>'started_at')::timestamptz, started_at),
                   finished_at = (w->>'finished_at')::timestamptz, error = w->>'error',
                   requested = CASE WHEN (w->>'clear_request')::boolean THEN NULL ELSE requested END,
                   owner = CASE WHEN (w->>'release')::boolean THEN NULL ELSE owner END,
                   lease_expires_at = CASE WHEN (w->>'release')::boolean THEN NULL ELSE lease_expires_at END,
                   input = coalesce(nullif(w->'input', 'null'), input),
                   fingerprint = coalesce(nullif(w->'fingerprint', 'null'), fingerprint),
                   wake_at = CASE WHEN w->>'state' <> 'waiting' THEN NULL
                       WHEN EXISTS (SELECT 1 FROM statepipe.signals g WHERE g.run_id = w->>'id'
                                     AND g.name IN (SELECT jsonb_array_elements_text(w->'awaits'))) THEN now()
                       ELSE (w->>'wake_at')::timestamptz END
             WHERE id = w->>'id';
        END LOOP;
    END IF;
    IF p ? 'new_steps' THEN
        INSERT INTO statepipe.steps (run_id, name, item, position, item_index, fanout, compensates, state, depends_on,
                                     claim_fence)
        SELECT n.run_id, n.name, n.item, n.position, n.item_index, n.fanout, n.compensates, n.state, n.depends_on,
               CASE WHEN n.claimable THEN 0 END
          FROM jsonb_to_recordset(p->'new_steps')
               AS n(run_id text, name text, item text, position integer, item_index integer, fanout boolean,
                    compensates text, state text, depends_on text[], claimable boolean);
        IF jsonb_path_exists(p->'new_steps', '$[*] ? (@.claimable == true)') THEN
            PERFORM pg_notify('statepipe_runnable', '');  -- children any worker may claim
        END IF;
    END IF;
    IF p ? 'steps' THEN
        UPDATE statepipe.steps s SET state = u.state, attempt = u.attempt, started_at = u.started_at,
               finished_at = u.finished_at, error = u.error, next_attempt_at = u.next_attempt_at,
               overrides = u.overrides, feedback = u.feedback, item_index = u.item_index, waiting_for = u.waiting_for,
               distribute = u.distribute
          FROM jsonb_to_recordset(p->'steps')
               AS u(run_id text, name text, item text, state text, attempt integer, started_at timestamptz,
                    finished_at timestamptz, error text, next_attempt_at timestamptz, overrides jsonb,
                    feedback text, item_index integer, waiting_for jsonb, distribute integer)
         WHERE s.run_id = u.run_id AND s.name = u.name AND s.item = u.item;
    END IF;
    IF p ? 'attempts' THEN
        INSERT INTO statepipe.attempts (run_id, step, item, number, state, started_at, finished_at, error,
                                        output, usage, cache_key, cached_from, traceback, worker)
        SELECT a.run_id, a.step, a.item, a.number, a.state, a.started_at, a.finished_at, a.error,
               coalesce(big[a.ob], p->'values'->a.o), p->'values'->a.u, a.cache_key, a.cached_from, a.traceback, a.worker
          FROM jsonb_to_recordset(p->'attempts')
               AS a(run_id text, step text, item text, number integer, state text, started_at timestamptz,
                    finished_at timestamptz, error text, o integer, ob integer, u integer, cache_key text,
                    cached_from jsonb, traceback text, worker text);
    END IF;
    RETURN lasts;
END $$;

-- v6: the seconds an owner that died executed the run since resumed_at, up to its last sign of
-- life: its last commit, or its last heartbeat (its lease's end less a lease's length).
CREATE OR REPLACE FUNCTION statepipe.lost_interval(resumed_at timestamptz, updated_at timestamptz,
    lease_expires_at timestamptz, lease_s float8) RETURNS float8 LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN resumed_at IS NULL THEN 0 ELSE greatest(0, extract(epoch FROM greatest(updated_at,
        lease_expires_at - make_interval(secs => lease_s)) - resumed_at)) END
$$;

-- v4: a worker's claim is a function of one JSON document too, so the writer can send it after a
-- commit, before one Sync: both go in one transaction, and a worker refilling a slot costs no
-- transaction of its own. `p` holds {owner, lease_s, limit, workflows (null: any), batch (null:
-- any), skip (run ids this worker cannot execute)}. Claims up to `limit` runs nobody holds (new,
-- released, or whose owner's lease ran out), oldest first, passing over rows other workers hold
-- locked. Returns the claimed rows as they now are (fencing token moved on), oldest first, each
-- with its first event (first_ts, first_type, first_data: run_created), as a JSON array.
CREATE OR REPLACE FUNCTION statepipe.claim_runs(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    wanted text[] := CASE WHEN jsonb_typeof(p->'workflows') = 'array'
                          THEN ARRAY(SELECT jsonb_array_elements_text(p->'workflows')) END;
    passed text[] := ARRAY(SELECT jsonb_array_elements_text(coalesce(p->'skip', '[]')));
    in_batch text := p->>'batch';
    claimed jsonb;
BEGIN
    WITH c AS (
        SELECT id FROM statepipe.runs
         WHERE (state IN ('pending', 'running') OR (state = 'failed' AND requested = 'retry')
                OR (state = 'waiting' AND wake_at <= now()))
           AND (owner IS NULL OR lease_expires_at < now())
           AND (wanted IS NULL OR workflow = ANY (wanted))
           AND (in_batch IS NULL OR batch_id = in_batch)
           AND id <> ALL (passed)
         ORDER BY created_at LIMIT (p->>'limit')::integer FOR UPDATE SKIP LOCKED
    ), u AS (
        UPDATE statepipe.runs r SET owner = p->>'owner', fencing_token = r.fencing_token + 1,
               lease_expires_at = now() + make_interval(secs => (p->>'lease_s')::float8),
               active_s = r.active_s + statepipe.lost_interval(r.resumed_at, r.updated_at, r.lease_expires_at,
                                                              (p->>'lease_s')::float8),
               resumed_at = NULL
          FROM c LEFT JOIN statepipe.events e ON e.run_id = c.id AND e.seq = 1
         WHERE r.id = c.id
        RETURNING r.*, e.ts AS first_ts, e.type AS first_type, e.data AS first_data
    )
    SELECT coalesce(jsonb_agg(to_jsonb(u) ORDER BY u.created_at), '[]') INTO claimed FROM u;
    RETURN claimed;
END $$;

-- v9 (v10: `skip`): a worker's claim of distributed fan-out children (see the v9 columns), as claim_runs is of
-- runs. `p` holds {owner, lease_s, limit, workflows (null: any), runs (null: any; a `statepipe
-- run` process helps only its own)}. A child is claimable while its fan-out runs in a running run
-- nobody asked to stop: pending, waiting for a retry that is due, or held by a claim whose lease
-- ran out (its worker died: running, the claimer records the attempt abandoned). Each fan-out
-- is locked while its children are claimed, so its limit holds across workers; a fan-out another
-- worker is claiming from is passed over. Returns the claimed rows with their run's workflow,
-- input and dry_run, and their parent's overrides and feedback, as a JSON array. `skip`: run ids
-- whose children this worker cannot run now (their workflow failed to load here).
CREATE OR REPLACE FUNCTION statepipe.claim_children(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    wanted text[] := CASE WHEN jsonb_typeof(p->'workflows') = 'array'
                          THEN ARRAY(SELECT jsonb_array_elements_text(p->'workflows')) END;
    own text[] := CASE WHEN jsonb_typeof(p->'runs') = 'array'
                       THEN ARRAY(SELECT jsonb_array_elements_text(p->'runs')) END;
    passed text[] := ARRAY(SELECT jsonb_array_elements_text(coalesce(p->'skip', '[]')));
    room integer := (p->>'limit')::integer;
    f record;
    held integer;
    got jsonb;
    claimed jsonb := '[]';
BEGIN
    FOR f IN SELECT s.run_id, s.name, s.attempt, s.distribute, s.overrides, s.feedback, r.workflow, r.workflow_ref,
                    r.input, r.dry_run
               FROM statepipe.steps s JOIN statepipe.runs r ON r.id = s.run_id
              WHERE s.distribute IS NOT NULL AND s.item = '' AND s.state = 'running'
                AND r.state = 'running' AND r.requested IS NULL
                AND (wanted IS NULL OR r.workflow = ANY (wanted)) AND (own IS NULL OR r.id = ANY (own))
                AND r.id <> ALL (passed)
              ORDER BY r.created_at FOR UPDATE OF s SKIP LOCKED LOOP
        EXIT WHEN room <= 0;
        SELECT count(*) INTO held FROM statepipe.steps c
         WHERE c.run_id = f.run_id AND c.name = f.name AND c.claim_fence IS NOT NULL AND c.claimed_by IS NOT NULL
           AND c.lease_expires_at >= now();
        WITH c AS (
            SELECT c.run_id, c.name, c.item, c.claimed_by AS prior FROM statepipe.steps c
             WHERE c.run_id = f.run_id AND c.name = f.name AND c.claim_fence IS NOT NULL
               AND c.state IN ('pending', 'waiting', 'running') AND c.item_index IS NOT NULL
               AND (c.state <> 'waiting' OR c.waiting_for IS NULL AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= now()))
               AND (c.claimed_by IS NULL AND c.state <> 'running' OR c.lease_expires_at < now())
             ORDER BY c.item_index LIMIT greatest(0, least(room, f.distribute - held)) FOR UPDATE SKIP LOCKED
        ), u AS (
            UPDATE statepipe.steps s SET claimed_by = p->>'owner', claim_fence = s.claim_fence + 1,
                   lease_expires_at = now() + make_interval(secs => (p->>'lease_s')::float8)
              FROM c WHERE s.run_id = c.run_id AND s.name = c.name AND s.item = c.item
            RETURNING s.run_id, s.name, s.item, s.item_index, s.state, s.attempt, s.error, s.claim_fence, s.started_at,
                      c.prior
        )
        SELECT coalesce(jsonb_agg(to_jsonb(u) || jsonb_build_object(
                   'workflow', f.workflow, 'workflow_ref', f.workflow_ref, 'input', f.input, 'dry_run', f.dry_run,
                   'overrides', f.overrides, 'feedback', f.feedback, 'parent_attempt', f.attempt) ORDER BY u.item_index), '[]')
          INTO got FROM u;
        claimed := claimed || got;
        room := room - jsonb_array_length(got);
    END LOOP;
    RETURN claimed;
END $$;

-- v9: a worker keeps its claims of children alive; returns those it still holds, each with its
-- run's request (cancel, pause_now...: the worker stops that child).
CREATE OR REPLACE FUNCTION statepipe.renew_claims(p jsonb) RETURNS jsonb LANGUAGE sql AS $$
    WITH u AS (
        UPDATE statepipe.steps s SET lease_expires_at = now() + make_interval(secs => (p->>'lease_s')::float8)
          FROM jsonb_to_recordset(p->'claims') AS c(run_id text, name text, item text, fence bigint)
         WHERE s.run_id = c.run_id AND s.name = c.name AND s.item = c.item AND s.claim_fence = c.fence
           AND s.claimed_by IS NOT NULL
        RETURNING s.run_id, s.name, s.item)
    SELECT coalesce(jsonb_agg(jsonb_build_object('run_id', u.run_id, 'name', u.name, 'item', u.item,
                                                 'requested', r.requested, 'state', r.state)), '[]')
      FROM u JOIN statepipe.runs r ON r.id = u.run_id
$$;

DROP FUNCTION IF EXISTS statepipe.append_events(text[], bigint[], integer[], integer[], integer[],
    timestamptz[], text[], text[], text[], integer[], text[]);

INSERT INTO statepipe.schema_version (version) VALUES (11) ON CONFLICT DO NOTHING;
