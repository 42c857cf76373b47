// Runs the Dataverse Web API operations fhirsync relies on through an
// independent client library, dynamics-web-api (pinned in package.json),
// against a Web API service (the sandbox CRM in tests).
//
//   DATAVERSE_TOKEN=<bearer token> node run.mjs <server URL>
//
// <server URL> is the organisation URL without the API path
// (http://127.0.0.1:port/); the library adds /api/data/v9.2/. Every
// operation prints one JSON line: {"op": name, "ok": true|false, ...}. ok is
// false when the library threw; "error" then holds the status, code and
// message it reported. The caller asserts each result; this script stops
// only when the library cannot be loaded or the arguments are wrong.
//
// The script expects the service to hold seven contacts whose lastname is
// "Pageable" (firstnames P1 to P7) and nothing else named so.

import { DynamicsWebApi } from "dynamics-web-api";

const serverUrl = process.argv[2];
const token = process.env.DATAVERSE_TOKEN ?? "";
if (!serverUrl) {
  process.stderr.write("usage: DATAVERSE_TOKEN=<token> node run.mjs <server URL>\n");
  process.exit(2);
}

const api = new DynamicsWebApi({
  serverUrl,
  dataApi: { version: "9.2" },
  onTokenRefresh: async () => token,
  // Let update, upsert and delete reject on 412 / 404 instead of answering
  // false or null, so every failure is reported with its status.
  propagateErrors: true,
  timeout: 30000,
});

function emit(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

// errorInfo keeps what the library reports about a failed request.
function errorInfo(e) {
  if (Array.isArray(e)) {
    return { parts: e.map((p) => (p instanceof Error || (p && p.status) ? errorInfo(p) : { ok: true })) };
  }
  if (!e || typeof e !== "object") return { message: String(e) };
  // A failed $batch part carries the Web API error body under "error".
  const body = e.error && typeof e.error === "object" ? e.error : e;
  return { status: e.status ?? null, code: body.code ?? e.code ?? null, message: body.message || e.message || null };
}

// step runs one operation; fn returns the fields to report.
async function step(op, fn) {
  try {
    const out = (await fn()) ?? {};
    emit({ op, ok: true, ...out });
    return out;
  } catch (e) {
    emit({ op, ok: false, error: errorInfo(e) });
    return null;
  }
}

// columns lists the data columns of a record, without annotations.
function columns(rec) {
  return Object.keys(rec)
    .filter((k) => !k.startsWith("@") && !k.startsWith("oData") && !k.includes("@") && !k.endsWith("_Formatted"))
    .sort();
}

const ctx = {};

await step("whoami", async () => {
  const r = await api.callFunction("WhoAmI");
  return { userId: r.UserId, businessUnitId: r.BusinessUnitId, organizationId: r.OrganizationId };
});

await step("create_representation", async () => {
  const r = await api.create({
    collection: "contacts",
    data: { firstname: "Ada", lastname: "Lovelace", gendercode: 2, birthdate: "1815-12-10", msemr_azurefhirid: "tp-create" },
    returnRepresentation: true,
  });
  ctx.contactId = r.contactid;
  ctx.etag = r["@odata.etag"];
  return { contactid: r.contactid, fullname: r.fullname, gendercode: r.gendercode, birthdate: r.birthdate, etag: r["@odata.etag"] };
});

await step("retrieve_select", async () => {
  const r = await api.retrieve({ collection: "contacts", key: ctx.contactId, select: ["firstname", "lastname"] });
  return { columns: columns(r), firstname: r.firstname, lastname: r.lastname, etag: r["@odata.etag"] };
});

await step("retrieve_multiple_paged", async () => {
  const req = { collection: "contacts", filter: "lastname eq 'Pageable'", select: ["firstname"], maxPageSize: 3 };
  const pages = [];
  const names = [];
  const cols = new Set();
  let link;
  for (let i = 0; i < 10; i++) {
    const r = await api.retrieveMultiple(req, link);
    pages.push(r.value.length);
    for (const v of r.value) {
      names.push(v.firstname);
      columns(v).forEach((c) => cols.add(c));
    }
    link = r.oDataNextLink;
    if (!link) break;
  }
  return { pages, firstnames: names.sort(), columns: [...cols].sort() };
});

await step("retrieve_multiple_top", async () => {
  const r = await api.retrieveMultiple({
    collection: "contacts",
    filter: "lastname eq 'Pageable' and firstname ne 'P1'",
    select: ["firstname"],
    orderBy: ["firstname desc"],
    top: 4,
  });
  return { firstnames: r.value.map((v) => v.firstname), nextLink: r.oDataNextLink ?? null };
});

await step("retrieve_all", async () => {
  const r = await api.retrieveAll({ collection: "contacts", filter: "lastname eq 'Pageable'", select: ["firstname"], maxPageSize: 2 });
  return { count: r.value.length };
});

await step("retrieve_if_none_match", async () => {
  // If-None-Match with the current ETag: 304, which the library answers
  // without a record; with an older one the row is read.
  const same = await api.retrieve({ collection: "contacts", key: ctx.contactId, select: ["firstname"], ifnonematch: ctx.etag });
  const other = await api.retrieve({ collection: "contacts", key: ctx.contactId, select: ["firstname"], ifnonematch: 'W/"1"' });
  return { notModified: same === undefined, changedFirstname: other?.firstname ?? null };
});

await step("count", async () => {
  const r = await api.retrieveMultiple({ collection: "contacts", filter: "lastname eq 'Pageable'", select: ["firstname"], count: true });
  return { count: r.oDataCount ?? null, rows: r.value.length };
});

await step("whoami_impersonated", async () => {
  const r = await api.callFunction({ name: "WhoAmI", impersonate: "7b0a4c1e-8f2d-4e6a-9c3b-1d2e3f405162" });
  return { userId: r.UserId };
});

await step("update_if_match", async () => {
  const r = await api.update({
    collection: "contacts",
    key: ctx.contactId,
    data: { jobtitle: "Analyst" },
    ifmatch: ctx.etag,
    returnRepresentation: true,
    select: ["jobtitle"],
  });
  ctx.newEtag = r["@odata.etag"];
  return { jobtitle: r.jobtitle, etagChanged: r["@odata.etag"] !== ctx.etag };
});

await step("update_stale_etag", async () => {
  await api.update({ collection: "contacts", key: ctx.contactId, data: { jobtitle: "Stale" }, ifmatch: ctx.etag });
  return {};
});

await step("delete_stale_etag", async () => {
  await api.deleteRecord({ collection: "contacts", key: ctx.contactId, ifmatch: ctx.etag });
  return {};
});

const upsertKey = "msemr_azurefhirid='tp-upsert'";

await step("upsert_create_only", async () => {
  const r = await api.upsert({
    collection: "contacts",
    key: upsertKey,
    data: { firstname: "Grace", lastname: "Hopper" },
    ifnonematch: "*",
    returnRepresentation: true,
  });
  ctx.upsertId = r.contactid;
  return { contactid: r.contactid, fullname: r.fullname, msemr_azurefhirid: r.msemr_azurefhirid };
});

await step("upsert_create_only_exists", async () => {
  await api.upsert({ collection: "contacts", key: upsertKey, data: { firstname: "Again" }, ifnonematch: "*" });
  return {};
});

await step("upsert_update_only", async () => {
  const r = await api.upsert({
    collection: "contacts",
    key: upsertKey,
    data: { jobtitle: "Rear Admiral" },
    ifmatch: "*",
    returnRepresentation: true,
  });
  return { contactid: r.contactid, jobtitle: r.jobtitle, firstname: r.firstname };
});

await step("upsert_update_only_missing", async () => {
  await api.upsert({ collection: "contacts", key: "msemr_azurefhirid='tp-missing'", data: { firstname: "Nobody" }, ifmatch: "*" });
  return {};
});

await step("upsert_either", async () => {
  // Without preconditions the same request creates, then updates.
  const first = await api.upsert({ collection: "contacts", key: "msemr_azurefhirid='tp-either'", data: { lastname: "Either" }, returnRepresentation: true });
  const second = await api.upsert({ collection: "contacts", key: "msemr_azurefhirid='tp-either'", data: { firstname: "Second" }, returnRepresentation: true });
  return { sameRow: first.contactid === second.contactid, fullname: second.fullname };
});

await step("bind_lookup", async () => {
  const account = await api.create({ collection: "accounts", data: { name: "Northwind Clinic" }, returnRepresentation: true });
  ctx.accountId = account.accountid;
  await api.update({
    collection: "contacts",
    key: ctx.upsertId,
    data: { "parentcustomerid_account@odata.bind": `accounts(${account.accountid})` },
  });
  const r = await api.retrieve({ collection: "contacts", key: ctx.upsertId, select: ["_parentcustomerid_value"] });
  const byKey = await api.retrieveMultiple({
    collection: "contacts",
    filter: `_parentcustomerid_value eq ${account.accountid}`,
    select: ["fullname"],
  });
  return { matches: r._parentcustomerid_value === account.accountid, children: byKey.value.map((v) => v.fullname) };
});

await step("formatted_values", async () => {
  const r = await api.retrieve({
    collection: "contacts",
    key: ctx.contactId,
    select: ["gendercode", "_parentcustomerid_value"],
    includeAnnotations: "OData.Community.Display.V1.FormattedValue",
  });
  return { gendercode: r.gendercode, formatted: r.gendercode_Formatted ?? null };
});

await step("metadata_attributes", async () => {
  const r = await api.retrieveAttributes({ entityKey: "LogicalName='contact'" });
  const byName = Object.fromEntries(r.value.map((a) => [a.LogicalName, a]));
  const strings = await api.retrieveAttributes({ entityKey: "LogicalName='contact'", castType: "StringAttributeMetadata" });
  return {
    count: r.value.length,
    fhirIdType: byName.msemr_azurefhirid?.AttributeType ?? null,
    stringMaxLength: Object.fromEntries(strings.value.filter((a) => a.LogicalName === "msemr_azurefhirid").map((a) => [a.LogicalName, a.MaxLength])),
    stringTypes: [...new Set(strings.value.map((a) => a.AttributeType))].sort(),
  };
});

await step("metadata_entity_expanded", async () => {
  // The shape fhirsync reads: $select on the entity, Attributes, Keys and
  // ManyToOneRelationships expanded, then option sets through a cast.
  const r = await api.retrieveEntity({
    key: "LogicalName='contact'",
    select: ["LogicalName", "EntitySetName", "PrimaryIdAttribute", "PrimaryNameAttribute", "ChangeTrackingEnabled"],
    expand: [
      { property: "Attributes" },
      { property: "Keys", select: ["LogicalName", "KeyAttributes"] },
      { property: "ManyToOneRelationships", select: ["ReferencingAttribute", "ReferencedEntity", "ReferencingEntityNavigationPropertyName"] },
    ],
  });
  const picklists = await api.retrieveAttributes({
    entityKey: "LogicalName='contact'",
    castType: "PicklistAttributeMetadata",
    select: ["LogicalName"],
    expand: [{ property: "OptionSet", select: ["Options"] }],
  });
  const gender = picklists.value.find((a) => a.LogicalName === "gendercode");
  return {
    primaryName: r.PrimaryNameAttribute,
    changeTracking: r.ChangeTrackingEnabled,
    attributes: (r.Attributes ?? []).length,
    keys: (r.Keys ?? []).map((k) => ({ name: k.LogicalName, attributes: k.KeyAttributes })),
    accountNav: (r.ManyToOneRelationships ?? [])
      .filter((m) => m.ReferencingAttribute === "parentcustomerid" && m.ReferencedEntity === "account")
      .map((m) => m.ReferencingEntityNavigationPropertyName),
    genderOptions: (gender?.OptionSet?.Options ?? []).map((o) => o.Value),
  };
});

await step("metadata_entity", async () => {
  const r = await api.retrieveEntity({ key: "LogicalName='contact'" });
  return { logicalName: r.LogicalName, entitySetName: r.EntitySetName, primaryId: r.PrimaryIdAttribute };
});

await step("batch_change_set", async () => {
  api.startBatch();
  api.create({ collection: "contacts", contentId: "1", data: { firstname: "Batch", lastname: "Parent", msemr_azurefhirid: "tp-batch" } });
  api.create({
    collection: "msemr_medicalidentifiers",
    data: { msemr_name: "MRN", msemr_identifiervalue: "B-1", "msemr_contact@odata.bind": "$1" },
  });
  api.update({ contentId: "$1", data: { jobtitle: "Batched" } });
  const responses = await api.executeBatch();
  const contactId = responses[0];
  const parent = await api.retrieve({ collection: "contacts", key: contactId, select: ["jobtitle"] });
  const children = await api.retrieveMultiple({
    collection: "msemr_medicalidentifiers",
    filter: `_msemr_contact_value eq ${contactId}`,
    select: ["msemr_identifiervalue"],
  });
  return {
    responses: responses.length,
    jobtitle: parent.jobtitle,
    identifiers: children.value.map((v) => v.msemr_identifiervalue),
  };
});

await step("batch_failing_change_set", async () => {
  api.startBatch();
  api.create({ collection: "contacts", data: { firstname: "Rolled", lastname: "Back", msemr_azurefhirid: "tp-rollback" } });
  api.update({ collection: "contacts", key: "00000000-0000-0000-0000-000000000404", data: { firstname: "Missing" } });
  let outcome;
  try {
    outcome = { rejected: false, parts: (await api.executeBatch()).map((p) => (p instanceof Error ? errorInfo(p) : { ok: true })) };
  } catch (e) {
    outcome = { rejected: true, ...errorInfo(e) };
  }
  const left = await api.retrieveMultiple({ collection: "contacts", filter: "msemr_azurefhirid eq 'tp-rollback'", select: ["contactid"] });
  return { ...outcome, committed: left.value.length };
});

await step("batch_continue_on_error", async () => {
  api.startBatch();
  api.update({ collection: "contacts", key: "00000000-0000-0000-0000-000000000405", data: { firstname: "Missing" }, inChangeSet: false });
  api.create({ collection: "contacts", data: { firstname: "After", lastname: "Failure", msemr_azurefhirid: "tp-continue" }, inChangeSet: false });
  let outcome;
  try {
    const parts = await api.executeBatch({ continueOnError: true });
    outcome = { rejected: false, parts: parts.map((p) => (p instanceof Error ? errorInfo(p) : { ok: true })) };
  } catch (e) {
    outcome = { rejected: true, ...errorInfo(e) };
  }
  const left = await api.retrieveMultiple({ collection: "contacts", filter: "msemr_azurefhirid eq 'tp-continue'", select: ["contactid"] });
  return { ...outcome, committed: left.value.length };
});

await step("batch_reads", async () => {
  api.startBatch();
  api.retrieve({ collection: "contacts", key: ctx.contactId, select: ["firstname"] });
  api.retrieveMultiple({ collection: "contacts", filter: "lastname eq 'Pageable'", select: ["firstname"] });
  const [one, many] = await api.executeBatch();
  return { firstname: one.firstname, count: many.value.length };
});

await step("change_tracking", async () => {
  const req = { collection: "contacts", select: ["firstname", "lastname"], trackChanges: true, maxPageSize: 4 };
  const initial = await api.retrieveAll(req);
  const deltaLink = initial.oDataDeltaLink;
  const pageable = await api.retrieveMultiple({ collection: "contacts", filter: "lastname eq 'Pageable'", select: ["firstname"], orderBy: ["firstname"] });
  const changed = pageable.value[0].contactid;
  const removed = pageable.value[1].contactid;
  await api.update({ collection: "contacts", key: changed, data: { firstname: "P1-changed" } });
  await api.deleteRecord({ collection: "contacts", key: removed });
  const delta = await api.retrieveMultiple(req, deltaLink);
  const updates = delta.value.filter((v) => v.contactid).map((v) => ({ same: v.contactid === changed, firstname: v.firstname }));
  const deletes = delta.value
    .filter((v) => !v.contactid)
    .map((v) => ({ same: v.id === removed, reason: v.reason, deletedEntity: String(v["@odata.context"] ?? v.oDataContext ?? "").endsWith("/$deletedEntity") }));
  return {
    initialCount: initial.value.length,
    hasDeltaLink: typeof deltaLink === "string" && deltaLink.includes("$deltatoken="),
    updates,
    deletes,
    nextDeltaLink: typeof delta.oDataDeltaLink === "string",
  };
});

await step("delete", async () => {
  await api.deleteRecord({ collection: "contacts", key: ctx.contactId, ifmatch: ctx.newEtag });
  return {};
});

await step("retrieve_deleted", async () => {
  await api.retrieve({ collection: "contacts", key: ctx.contactId, select: ["firstname"] });
  return {};
});

emit({ op: "done", ok: true });
