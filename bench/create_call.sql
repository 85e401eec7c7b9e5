-- pgbench: the statements one POST /v1/calls/create runs, in the same transactions, with the same
-- parameters — the database's ceiling for that work. Variables: keyhash, usr, num, agent, conn.
-- Run with -M prepared, as the server runs them (prepared statements, bound parameters).
-- authentication
SELECT user_id FROM api_keys WHERE key_hash = decode(:keyhash, 'hex') AND revoked_at IS NULL;
-- the call row and its dispatch, in one transaction
BEGIN;
SELECT monthly_usage_limit_minutes FROM users WHERE id = (:usr)::uuid;
SELECT id, user_id, number, active, label, outbound_only, example_context, telephony_provider, telephony_account_connection_id, inbound_agent_id, bought, carrier_ref, created_at, updated_at FROM phone_numbers WHERE user_id = (:usr)::uuid AND number = (:num)::text;
SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM agents WHERE id = (:agent)::uuid AND user_id = (:usr)::uuid;
INSERT INTO calls (id, user_id, direction, status, stage, telephony_provider, to_number, from_number, agent_phone_number, agent_id, telephony_account_connection_id, hipaa_compliant, on_no_human_answer, record, version, created_at, updated_at) VALUES (gen_random_uuid(), (:usr)::uuid, 'outbound', 'not_started', 'created', 'twilio', '16505550000', (:num)::text, (:num)::text, (:agent)::uuid, (:conn)::uuid, false, 'continue', true, 0, now(), now()) RETURNING id AS call_id \gset
INSERT INTO jobs (id, kind, payload, ordering_key, state, run_at, attempts, max_attempts, locked_until, locked_by, created_at, updated_at) VALUES (gen_random_uuid(), 'dispatch_call', jsonb_build_object('call_id', (:call_id)::text), 'dispatch:' || (:call_id)::text, 'ready', now(), 1, 5, now() + interval '2 minutes', 'bench', now(), now()) RETURNING id AS job_id \gset
COMMIT;
-- the dispatch job: the call, the agent's webhook, the account connection
SELECT * FROM calls WHERE id = (:call_id)::uuid;
SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM agents WHERE id = (:agent)::uuid AND user_id = (:usr)::uuid;
SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM account_connections WHERE id = (:conn)::uuid AND user_id = (:usr)::uuid;
-- the carrier's answer, applied by compare-and-set
BEGIN;
SELECT * FROM calls WHERE id = (:call_id)::uuid;
UPDATE calls SET status = 'in_progress', telephony_id = 'CA' || replace((:call_id)::text, '-', ''), start_time = now(), carrier_status = 'queued', last_carrier_event_at = now(), version = 1, updated_at = now() WHERE id = (:call_id)::uuid AND version = 0;
SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM agents WHERE id = (:agent)::uuid AND user_id = (:usr)::uuid;
COMMIT;
BEGIN;
DELETE FROM jobs WHERE id = (:job_id)::uuid AND (locked_by = 'bench' OR locked_by IS NULL);
COMMIT;
-- the answer: the call with its agent and connection
SELECT * FROM calls WHERE id = (:call_id)::uuid AND user_id = (:usr)::uuid;
SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM agents WHERE id = (:agent)::uuid AND user_id = (:usr)::uuid;
SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM prompts WHERE user_id = (:usr)::uuid LIMIT 1;
SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM voices WHERE user_id = (:usr)::uuid LIMIT 1;
SELECT id, user_id, kind, created_at, updated_at, body, sealed FROM account_connections WHERE id = (:conn)::uuid AND user_id = (:usr)::uuid;
