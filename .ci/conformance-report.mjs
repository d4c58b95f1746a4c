// Compares two runs of the MCP conformance server suite (direct to the
// upstream, and through Caddy) and decides whether the proxy regressed.
//
// usage: node conformance-report.mjs <direct-dir> <proxy-dir>
//
// Each dir holds what .ci/conformance.sh left there:
//   scenarios.txt  the scenario names the CLI announced ("=== Running scenario: X ===")
//   results/       the CLI's --output-dir: one server-<scenario>-<timestamp>/checks.json
//                  per scenario that ran to completion
//
// A scenario passes when its checks.json exists, holds at least one check and
// no check has status FAILURE. A scenario that was announced but left no
// checks.json (the CLI threw) fails.
//
// Exit 1 when a scenario passes directly but fails through the proxy, when a
// dns-rebinding scenario fails through the proxy, or when the direct run ran
// nothing at all. The last line printed is always
//   conformance: N passed, M failed
// for the proxied run.

import fs from "node:fs";
import path from "node:path";

const [directDir, proxyDir] = process.argv.slice(2);
if (!directDir || !proxyDir) {
  console.error("usage: conformance-report.mjs <direct-dir> <proxy-dir>");
  process.exit(2);
}

// Timestamp suffix written by the CLI: new Date().toISOString() with ':' and
// '.' replaced by '-', e.g. 2026-01-02T03-04-05-678Z.
const dirRe = /^server-(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$/;

function load(dir) {
  const scenarios = new Map(); // name -> {pass, checks, failures, warnings}
  const listFile = path.join(dir, "scenarios.txt");
  const announced = fs.existsSync(listFile)
    ? fs.readFileSync(listFile, "utf8").split("\n").map((s) => s.trim()).filter(Boolean)
    : [];
  for (const name of announced) {
    scenarios.set(name, { pass: false, checks: 0, failures: ["no checks.json written (scenario threw)"], warnings: 0 });
  }
  const resDir = path.join(dir, "results");
  const entries = fs.existsSync(resDir) ? fs.readdirSync(resDir) : [];
  for (const ent of entries.sort()) {
    const m = dirRe.exec(ent);
    if (!m) continue;
    const file = path.join(resDir, ent, "checks.json");
    if (!fs.existsSync(file)) continue;
    let checks;
    try {
      checks = JSON.parse(fs.readFileSync(file, "utf8"));
    } catch (e) {
      scenarios.set(m[1], { pass: false, checks: 0, failures: [`unreadable checks.json: ${e.message}`], warnings: 0 });
      continue;
    }
    const failed = checks.filter((c) => c.status === "FAILURE");
    scenarios.set(m[1], {
      pass: checks.length > 0 && failed.length === 0,
      checks: checks.length,
      failures: failed.map((c) => `${c.id}: ${c.errorMessage || c.description || ""}`),
      warnings: checks.filter((c) => c.status === "WARNING").length,
    });
  }
  return scenarios;
}

const direct = load(directDir);
const proxy = load(proxyDir);
const names = [...new Set([...direct.keys(), ...proxy.keys()])];

const cell = (r) => (!r ? "-" : r.pass ? "pass" : "FAIL") + (r && r.warnings ? ` (${r.warnings}w)` : "");
const width = Math.max(8, ...names.map((n) => n.length));
console.log(`${"scenario".padEnd(width)}  ${"direct".padEnd(10)}  ${"proxy".padEnd(10)}  note`);
console.log(`${"-".repeat(width)}  ${"-".repeat(10)}  ${"-".repeat(10)}  ----`);

const regressions = [];
const rebindingFailures = [];
for (const n of names) {
  const d = direct.get(n);
  const p = proxy.get(n);
  let note = "";
  const isRebinding = n.includes("dns-rebinding");
  if (d?.pass && !p?.pass) {
    regressions.push(n);
    note = "REGRESSION through proxy";
  }
  if (isRebinding && !p?.pass) {
    rebindingFailures.push(n);
    note = note ? `${note}; dns-rebinding must pass` : "dns-rebinding must pass through proxy";
  }
  if (!note && d && !d.pass && p?.pass) note = "passes only through proxy";
  if (!note && d && !d.pass) note = "fails upstream too (not gated)";
  console.log(`${n.padEnd(width)}  ${cell(d).padEnd(10)}  ${cell(p).padEnd(10)}  ${note}`);
}

const count = (m) => [...m.values()].filter((r) => r.pass).length;
console.log("");
console.log(`direct: ${count(direct)}/${direct.size} passed, proxy: ${count(proxy)}/${proxy.size} passed`);

const detail = (label, m, list) => {
  for (const n of list) {
    const r = m.get(n);
    if (!r) continue;
    console.log(`  ${label} ${n}:`);
    for (const f of r.failures) console.log(`      ${f}`);
  }
};
const proxyFailed = names.filter((n) => !proxy.get(n)?.pass);
if (proxyFailed.length) {
  console.log("\nfailed checks through the proxy:");
  detail("proxy", proxy, proxyFailed);
}
const directFailed = names.filter((n) => direct.has(n) && !direct.get(n).pass);
if (directFailed.length) {
  console.log("\nfailed checks directly against the upstream:");
  detail("direct", direct, directFailed);
}

let bad = false;
if (direct.size === 0) {
  console.log("\nERROR: the direct run produced no scenario results; the harness is broken");
  bad = true;
}
if (regressions.length) {
  console.log(`\nERROR: ${regressions.length} scenario(s) pass directly but fail through the proxy: ${regressions.join(", ")}`);
  bad = true;
}
if (rebindingFailures.length) {
  console.log(`\nERROR: dns-rebinding scenario(s) fail through the proxy: ${rebindingFailures.join(", ")}`);
  bad = true;
}
const pPass = count(proxy);
console.log(`\nconformance: ${pPass} passed, ${proxy.size - pPass} failed`);
process.exit(bad ? 1 : 0);
