// Calls every DecisionService RPC of a tenantgate server serving examples/manifests and checks each answer:
// one line per check, exit status 1 when any fails.
//
//   node interop.js [ADDRESS]        (default: $TENANTGATE_TARGET, else 127.0.0.1:50051, where `make run` serves)
//
// The server must name callers by x-tenantgate-caller (--trust-caller-metadata, as `make run` does on loopback)
// for the key checks. Counters and keys it touches are left as it found them, so it can run again and again.
import { createCipheriv, createDecipheriv, createPrivateKey, randomBytes, randomUUID, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';

import { DecisionClient, grpc } from './client.js';

const address = process.argv[2] ?? process.env.TENANTGATE_TARGET ?? '127.0.0.1:50051';
// From examples/manifests/acme.yaml: keys.readers names service:storage; service:web is nobody there.
const KEY_READER = 'service:storage';
const NOT_A_KEY_READER = 'service:web';
// The demo identity provider whose public key acme.yaml lists (examples/demo-idp/; never trust it for real).
const DEMO_IDP_KEY = createPrivateKey(readFileSync(new URL('../demo-idp/private-key.pem', import.meta.url)));

// ---- reporting ----------------------------------------------------------------------------------------

let checks = 0;
let failures = 0;
const rpcsWithAPassingCheck = new Set();

// Key material and data keys must not reach a terminal or a CI log: bytes are shown by length only.
const printable = (value) => JSON.stringify(value, (_name, field) =>
  field?.type === 'Buffer' && Array.isArray(field.data) ? `<${field.data.length} bytes>` : field);

function report(rpc, what, ok, got) {
  checks += 1;
  if (ok) rpcsWithAPassingCheck.add(rpc);
  else failures += 1;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${rpc}: ${what}${ok ? '' : `\n       got ${printable(got)}`}`);
}

// True when every field of `expected` equals that field of `actual` (recursively); other fields are ignored.
function matches(actual, expected) {
  if (expected === null || typeof expected !== 'object') return Object.is(actual, expected);
  if (actual === null || typeof actual !== 'object') return false;
  if (Array.isArray(expected)) {
    return Array.isArray(actual) && actual.length === expected.length
      && expected.every((item, i) => matches(actual[i], item));
  }
  return Object.entries(expected).every(([field, value]) => matches(actual[field], value));
}

const expectFields = (rpc, what, actual, expected) => report(rpc, what, matches(actual, expected), actual);
const expectThat = (rpc, what, condition, actual) => report(rpc, what, Boolean(condition), actual);

// How a call ended: { answer } when it succeeded, else its status name, message and the serialized
// google.rpc.Status that tenantgate adds to errors (grpc-status-details-bin, e.g. a BadRequest naming the field).
async function outcome(call) {
  try {
    return { answer: await call };
  } catch (error) {
    if (error.code === undefined) throw error; // not a gRPC status: a bug here, reported by group()
    const [statusDetails] = error.metadata.get('grpc-status-details-bin');
    return { code: grpc.status[error.code], details: error.details, statusDetails };
  }
}

// Runs one group of checks; a call that fails unexpectedly is one failed check, and the other groups still run.
async function group(rpc, checkAll) {
  try {
    await checkAll();
  } catch (error) {
    report(rpc, 'unexpected error', false, { code: grpc.status[error.code], details: error.details ?? error.message });
  }
}

const seconds = (duration) => Number(duration.seconds) + duration.nanos / 1e9;

// A token from the demo identity provider, signed with node:crypto (ES256 = ECDSA P-256 + SHA-256).
function demoToken(claims) {
  const part = (object) => Buffer.from(JSON.stringify(object)).toString('base64url');
  const signed = `${part({ alg: 'ES256', typ: 'JWT', kid: 'demo-1' })}.${part(claims)}`;
  const signature = sign('sha256', Buffer.from(signed), { key: DEMO_IDP_KEY, dsaEncoding: 'ieee-p1363' });
  return `${signed}.${signature.toString('base64url')}`;
}

function aliceToken(expiresIn) {
  const now = Math.floor(Date.now() / 1000);
  return demoToken({ iss: 'https://idp.acme.example', aud: 'tenantgate', tid: 'acme', sub: 'alice',
    scope: 'read write', iat: now, exp: now + expiresIn });
}

// ---- the checks ---------------------------------------------------------------------------------------

const client = new DecisionClient(address);

async function checkAccess() {
  const check = (request, options) => client.checkAccess({ tenant_id: 'acme', ...request }, options);
  const answer = await check({ subject: 'user:alice', action: 'delete', resource: 'docs/plan.md' });
  expectFields('CheckAccess', 'alice, an admin of acme, may delete docs/plan.md', answer,
    { allowed: true, reason: 'DECISION_REASON_ALLOWED', rule: 'acme/roles/admin/allow/0' });
  expectThat('CheckAccess', 'an answer names its registry revision and a decision id',
    BigInt(answer.revision) >= 1n && answer.decision_id !== '', answer);
  expectFields('CheckAccess', 'bob edits docs in dev and staging only: not in prod',
    await check({ subject: 'user:bob', action: 'write', resource: 'docs/plan.md', environment: 'prod' }),
    { allowed: false, reason: 'DECISION_REASON_NO_MATCHING_GRANT', rule: '' });
  expectFields('CheckAccess', "acme's tenant-wide deny beats alice's admin role",
    await check({ subject: 'user:alice', action: 'delete', resource: 'audit/2026' }),
    { allowed: false, reason: 'DECISION_REASON_EXPLICIT_DENY', rule: 'acme/deny/0' });
  expectFields('CheckAccess', 'carol, a viewer through group:support, may not read secrets',
    await check({ subject: 'user:carol', action: 'read', resource: 'secrets/db' }),
    { allowed: false, reason: 'DECISION_REASON_EXPLICIT_DENY', rule: 'acme/roles/viewer/deny/0' });
  expectFields('CheckAccess', "globex's service:auditor reads acme's reports by acme's grant",
    await check({ subject: 'service:auditor', subject_tenant_id: 'globex', action: 'read', resource: 'reports/q3' }),
    { allowed: true, reason: 'DECISION_REASON_ALLOWED', rule: 'acme/grants/0/allow/0' });
  expectFields('CheckAccess', "globex's user:alice is not acme's user:alice",
    await check({ subject: 'user:alice', subject_tenant_id: 'globex', action: 'read', resource: 'docs/x' }),
    { allowed: false, reason: 'DECISION_REASON_CROSS_TENANT_DENIED' });
  expectFields('CheckAccess', 'initech is Suspended: its member may not write',
    await check({ tenant_id: 'initech', subject: 'user:peter', action: 'write', resource: 'docs/x' }),
    { allowed: false, reason: 'DECISION_REASON_TENANT_NOT_ACTIVE' });
  expectFields('CheckAccess', "alice's token from acme's identity provider lets her read docs",
    await check({ token: aliceToken(300), action: 'read', resource: 'docs/x' }),
    { allowed: true, reason: 'DECISION_REASON_ALLOWED', rule: 'acme/roles/admin/allow/0' });

  const malformed = await outcome(client.checkAccess({ subject: 'user:alice', action: 'read', resource: 'docs/x' }));
  expectThat('CheckAccess', 'no tenant_id: INVALID_ARGUMENT, its status details a BadRequest naming the field',
    matches(malformed, { code: 'INVALID_ARGUMENT', details: 'tenant_id is required' })
      && malformed.statusDetails?.includes('type.googleapis.com/google.rpc.BadRequest')
      && malformed.statusDetails.includes('tenant_id'), malformed);

  // A snapshot the server will not reach: it waits until just before the caller's deadline, then answers
  // FAILED_PRECONDITION, so the caller learns why instead of timing out.
  const deadlineMs = 500;
  const started = performance.now();
  const unreachable = { subject: 'user:alice', action: 'read', resource: 'docs/x', min_revision: '1000000000' };
  const late = await outcome(check(unreachable, { deadlineMs }));
  const elapsedMs = Math.round(performance.now() - started);
  expectThat('CheckAccess', `min_revision out of reach: FAILED_PRECONDITION inside a ${deadlineMs} ms deadline`,
    late.code === 'FAILED_PRECONDITION' && elapsedMs < deadlineMs, { ...late, elapsedMs });
}

async function checkAccessBatch() {
  const alice = { subject: 'user:alice', resource: 'docs/x' };
  const answer = await client.checkAccessBatch({
    items: [
      { correlation_id: 'first', check: { tenant_id: 'acme', action: 'read', ...alice } },
      { correlation_id: 'second', check: { tenant_id: 'acme', ...alice } }, // no action: malformed
      { correlation_id: 'third', check: { tenant_id: 'nobody', action: 'read', ...alice } },
    ],
  });
  expectFields('CheckAccessBatch', 'answers in order, each with its correlation_id; a malformed check is its own error',
    answer.results, [
      { correlation_id: 'first', outcome: 'decision', decision: { allowed: true, reason: 'DECISION_REASON_ALLOWED' } },
      { correlation_id: 'second', outcome: 'error',
        error: { code: grpc.status.INVALID_ARGUMENT, field: 'items[1].check.action' } },
      { correlation_id: 'third', outcome: 'decision',
        decision: { allowed: false, reason: 'DECISION_REASON_TENANT_NOT_FOUND' } },
    ]);
}

async function consumeQuota() {
  const consume = (items, more = {}) => client.consumeQuota({ tenant_id: 'acme', items, ...more });
  const usersLeft = async () => (await consume([{ quota: 'users', amount: 0 }])).results[0].remaining;

  const bucket = await consume([{ quota: 'api-requests', amount: 5 }]);
  expectThat('ConsumeQuota', 'a token bucket (1000/minute, burst 100) admits 5; its limit is the burst',
    matches(bucket, { allowed: true, results: [{ quota: 'api-requests', allowed: true, limit: '100' }] })
      && BigInt(bucket.results[0].remaining) <= 95n, bucket);
  const month = await consume([{ quota: 'ai-requests', amount: 1 }]);
  expectThat('ConsumeQuota', 'a calendar window (50000 a month) admits 1 and resets by the end of the month',
    matches(month, { allowed: true, results: [{ limit: '50000' }] })
      && seconds(month.results[0].reset_after) > 0 && seconds(month.results[0].reset_after) <= 31 * 86400, month);

  const users = await usersLeft();
  const denied = await consume([{ quota: 'api-requests', amount: 1 }, { quota: 'users', amount: 26 }]);
  expectThat('ConsumeQuota', '26 users of 25 denies the whole call and spends nothing',
    matches(denied, { allowed: false, results: [{ allowed: true }, { quota: 'users', allowed: false, limit: '25' }] })
      && await usersLeft() === users, denied);

  const idempotency_key = randomUUID();
  const first = await consume([{ quota: 'users', amount: 3 }], { idempotency_key });
  const retried = await consume([{ quota: 'users', amount: 3 }], { idempotency_key });
  expectThat('ConsumeQuota', 'a retry with the same idempotency_key returns the first answer and counts once',
    first.allowed && BigInt(first.results[0].remaining) === BigInt(users) - 3n && matches(retried, first)
      && await usersLeft() === first.results[0].remaining, { users, first, retried });
  expectFields('ConsumeQuota', 'the same idempotency_key with another payload is ABORTED',
    await outcome(consume([{ quota: 'users', amount: 4 }], { idempotency_key })), { code: 'ABORTED' });
  expectFields('ConsumeQuota', 'releasing the 3 users gives them back',
    await consume([{ quota: 'users', amount: 3 }], { release: true }),
    { allowed: true, results: [{ remaining: users }] });

  const lease = await consume([{ quota: 'concurrent-requests', amount: 1 }]);
  const lease_id = lease.results[0].lease_id;
  expectThat('ConsumeQuota', 'a concurrency quota hands out a lease', lease.allowed && lease_id !== '', lease);
  expectFields('ConsumeQuota', 'the lease is released by its id',
    await consume([{ quota: 'concurrent-requests', lease_id }], { release: true }), { allowed: true });
  expectFields('ConsumeQuota', 'a lease released already is NOT_FOUND',
    await outcome(consume([{ quota: 'concurrent-requests', lease_id }], { release: true })), { code: 'NOT_FOUND' });
  expectFields('ConsumeQuota', 'an unknown tenant is NOT_FOUND',
    await outcome(client.consumeQuota({ tenant_id: 'nobody', items: [{ quota: 'api-requests', amount: 1 }] })),
    { code: 'NOT_FOUND' });
}

async function keys() {
  const acmeData = { tenant_id: 'acme', purpose: 'data' };
  const asReader = { caller: KEY_READER };

  const key = await client.getTenantKey(acmeData, asReader);
  expectThat('GetTenantKey', `${KEY_READER} reads acme's primary data key: 32 bytes of AES-256-GCM, enabled`,
    matches(key, { key_id: `acme/data/v${key.version}`, algorithm: 'AES-256-GCM', state: 'KEY_STATE_ENABLED' })
      && key.version >= 1 && key.material.length === 32, key);
  expectFields('GetTenantKey', `${NOT_A_KEY_READER} is not in keys.readers: PERMISSION_DENIED`,
    await outcome(client.getTenantKey(acmeData, { caller: NOT_A_KEY_READER })), { code: 'PERMISSION_DENIED' });

  const metadata = await client.getTenantKeyMetadata(acmeData, asReader);
  const primary = metadata.versions.find((version) => version.version === metadata.primary_version);
  expectThat('GetTenantKeyMetadata', 'lists the versions and states, the primary one enabled, and no material',
    matches(primary, { key_id: key.key_id, state: 'KEY_STATE_ENABLED' })
      && metadata.versions.every((version) => !('material' in version)), metadata);
  expectFields('GetTenantKeyMetadata', `${NOT_A_KEY_READER} is refused: PERMISSION_DENIED`,
    await outcome(client.getTenantKeyMetadata(acmeData, { caller: NOT_A_KEY_READER })), { code: 'PERMISSION_DENIED' });

  // Envelope encryption: seal data with a fresh data key, keep only the wrapped key beside it.
  const dataKey = await client.getDataKey(acmeData, asReader);
  expectThat('GetDataKey', 'a fresh 32-byte data key, and its wrapped form under the primary version',
    dataKey.key_id === key.key_id && dataKey.plaintext.length === 32 && dataKey.wrapped.length > 32, dataKey);
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', dataKey.plaintext, iv);
  const sealed = Buffer.concat([cipher.update('a record of acme'), cipher.final()]);
  const tag = cipher.getAuthTag();

  const opened = await client.decryptDataKey({ ...acmeData, wrapped: dataKey.wrapped }, asReader);
  const decipher = createDecipheriv('aes-256-gcm', opened.plaintext, iv).setAuthTag(tag);
  expectThat('DecryptDataKey', 'unwraps the data key, which opens what it sealed',
    opened.plaintext.equals(dataKey.plaintext)
      && Buffer.concat([decipher.update(sealed), decipher.final()]).toString() === 'a record of acme', opened);
  const altered = Buffer.from(dataKey.wrapped);
  altered[altered.length - 1] ^= 1;
  expectFields('DecryptDataKey', 'a wrapped key altered by one bit does not open: INVALID_ARGUMENT',
    await outcome(client.decryptDataKey({ ...acmeData, wrapped: altered }, asReader)), { code: 'INVALID_ARGUMENT' });
}

async function validateToken() {
  const token = aliceToken(300);
  const expiresAt = JSON.parse(Buffer.from(token.split('.')[1], 'base64url')).exp;
  const valid = await client.validateToken({ token });
  expectFields('ValidateToken', "alice's token is valid: tenant, subject, scopes and expiry", valid,
    { valid: true, reason: 'DECISION_REASON_ALLOWED', tenant_id: 'acme', subject: 'user:alice',
      scopes: ['read', 'write'], expires_at: { seconds: String(expiresAt) } });
  expectFields('ValidateToken', 'a token that expired an hour ago is TOKEN_EXPIRED',
    await client.validateToken({ token: aliceToken(-3600) }),
    { valid: false, reason: 'DECISION_REASON_TOKEN_EXPIRED' });
  const forged = `${token.slice(0, token.lastIndexOf('.'))}.${demoToken({ forged: true }).split('.')[2]}`;
  expectFields('ValidateToken', 'a token with a signature of other claims is TOKEN_INVALID',
    await client.validateToken({ token: forged }), { valid: false, reason: 'DECISION_REASON_TOKEN_INVALID' });
}

async function resolveTenant() {
  expectFields('ResolveTenant', 'acme as a gateway sees it', await client.resolveTenant({ tenant_id: 'acme' }), {
    tenant_id: 'acme', name: 'Acme Corp', state: 'TENANT_STATE_ACTIVE', plan: 'professional',
    profile: 'multi-tenant', isolation: 'soft', environments: ['dev', 'staging', 'prod'],
    features: ['ai-review', 'sso'], labels: { region: 'eu-west', tier: 'gold' }, stale: false,
  });
  expectFields('ResolveTenant', 'initech is Suspended', await client.resolveTenant({ tenant_id: 'initech' }),
    { state: 'TENANT_STATE_SUSPENDED', plan: 'free' });
  expectFields('ResolveTenant', 'an unknown tenant is NOT_FOUND',
    await outcome(client.resolveTenant({ tenant_id: 'nobody' })), { code: 'NOT_FOUND' });
}

async function subjectTenants() {
  // globex's auditor holds a role at home and acme grants it reports: two tenants, sorted by id.
  const auditor = await client.listSubjectTenants({ subject: 'service:auditor', subject_tenant_id: 'globex' });
  expectFields('ListSubjectTenants', "globex's auditor may use acme (by its grant) and globex (by its role)", auditor, {
    reason: 'DECISION_REASON_ALLOWED', subject: 'service:auditor', subject_tenant_id: 'globex', next_page_token: '',
    tenants: [
      { tenant_id: 'acme', state: 'TENANT_STATE_ACTIVE', allowed: true, reason: 'DECISION_REASON_ALLOWED',
        roles: [], grants: ['acme/grants/0'] },
      { tenant_id: 'globex', state: 'TENANT_STATE_ACTIVE', allowed: true, reason: 'DECISION_REASON_ALLOWED',
        roles: [{ role: 'auditor', group: '', environments: [] }], grants: [] },
    ],
  });
  const first = await client.listSubjectTenants({ subject: 'service:auditor', subject_tenant_id: 'globex',
    page_size: 1 });
  const second = await client.listSubjectTenants({ subject: 'service:auditor', subject_tenant_id: 'globex',
    page_size: 1, page_token: first.next_page_token });
  expectThat('ListSubjectTenants', 'one tenant a page: acme, then globex, then no next page',
    first.tenants[0].tenant_id === 'acme' && second.tenants[0].tenant_id === 'globex'
      && first.next_page_token !== '' && second.next_page_token === '', { first, second });
  expectFields('ListSubjectTenants', 'a page_size over 1000 is INVALID_ARGUMENT',
    await outcome(client.listSubjectTenants({ subject: 'user:alice', subject_tenant_id: 'acme', page_size: 5000 })),
    { code: 'INVALID_ARGUMENT' });
}

async function checkTenantAccess() {
  expectFields('CheckTenantAccess', "bob may use acme, in dev", await client.checkTenantAccess(
    { tenant_id: 'acme', subject: 'user:bob', environment: 'dev' }),
  { allowed: true, reason: 'DECISION_REASON_ALLOWED', state: 'TENANT_STATE_ACTIVE',
    roles: [{ role: 'editor', group: '', environments: ['dev', 'staging'] }] });
  expectFields('CheckTenantAccess', "acme's alice may not use globex: no grant crosses",
    await client.checkTenantAccess({ tenant_id: 'globex', subject: 'user:alice', subject_tenant_id: 'acme' }),
    { allowed: false, reason: 'DECISION_REASON_CROSS_TENANT_DENIED' });
  expectFields('CheckTenantAccess', 'initech is Suspended: TENANT_NOT_ACTIVE',
    await client.checkTenantAccess({ tenant_id: 'initech', subject: 'user:peter' }),
    { allowed: false, reason: 'DECISION_REASON_TENANT_NOT_ACTIVE', state: 'TENANT_STATE_SUSPENDED' });
}

try {
  await client.waitForReady(5000);
} catch (error) {
  console.log(`FAIL cannot connect to ${address}: ${error.message}`);
  process.exit(1);
}
console.log(`tenantgate at ${address}`);
await group('CheckAccess', checkAccess);
await group('CheckAccessBatch', checkAccessBatch);
await group('ConsumeQuota', consumeQuota);
await group('GetTenantKey', keys);
await group('ValidateToken', validateToken);
await group('ResolveTenant', resolveTenant);
await group('ListSubjectTenants', subjectTenants);
await group('CheckTenantAccess', checkTenantAccess);
const unchecked = client.rpcs.filter((rpc) => !rpcsWithAPassingCheck.has(rpc));
expectThat('DecisionService', `each of its ${client.rpcs.length} RPCs passed at least one check`,
  unchecked.length === 0, { unchecked });
client.close();

console.log(`${checks - failures} of ${checks} checks passed`);
process.exitCode = failures === 0 ? 0 : 1;
