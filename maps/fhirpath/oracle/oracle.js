// Reference FHIRPath evaluator for the differential test and the speed
// comparison of maps/fhirpath: fhirpath.js 5.2.0 with the R4 model.
//
// Usage:
//   node oracle.js            reads [{"expression", "resource"}] on stdin and
//                             prints [{"result": [...]} | {"error": "..."}]
//   node oracle.js --bench N  reads the same input and prints, per case, the
//                             median ns per evaluation over N rounds:
//                             [{"nsPerOp": 1234.5} | {"error": "..."}]
//   node oracle.js --serve N  reads one case per line and answers each with
//                             one line of the --bench form, so that a caller
//                             can alternate its own timings with these
'use strict';

const fhirpath = require('fhirpath');
const r4 = require('fhirpath/fhir-context/r4');

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on('data', (c) => chunks.push(c));
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    process.stdin.on('error', reject);
  });
}

function evaluate(c) {
  try {
    const fn = fhirpath.compile(c.expression, r4);
    return { result: fn(c.resource) };
  } catch (err) {
    return { error: String(err && err.message ? err.message : err) };
  }
}

function median(xs) {
  const s = xs.slice().sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

// bench times the compiled expression: each round runs it long enough to be
// measurable, and the median of the rounds is reported.
function bench(c, rounds) {
  let fn;
  try {
    fn = fhirpath.compile(c.expression, r4);
    fn(c.resource);
  } catch (err) {
    return { error: String(err && err.message ? err.message : err) };
  }
  let n = 1;
  for (;;) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) fn(c.resource);
    if (Number(process.hrtime.bigint() - t0) > 2e6 || n > 1e6) break;
    n *= 2;
  }
  const samples = [];
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) fn(c.resource);
    samples.push(Number(process.hrtime.bigint() - t0) / n);
  }
  return { nsPerOp: median(samples) };
}

function serve(rounds) {
  const rl = require('readline').createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (line.trim() === '') return;
    process.stdout.write(JSON.stringify(bench(JSON.parse(line), rounds)) + '\n');
  });
}

async function main() {
  const s = process.argv.indexOf('--serve');
  if (s >= 0) {
    serve(Number(process.argv[s + 1] || 5));
    return;
  }
  const cases = JSON.parse(await readStdin());
  const i = process.argv.indexOf('--bench');
  let out;
  if (i >= 0) {
    const rounds = Number(process.argv[i + 1] || 5);
    out = cases.map((c) => bench(c, rounds));
  } else {
    out = cases.map(evaluate);
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + '\n');
  process.exit(1);
});
