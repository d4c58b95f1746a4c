// Compares three runs of the MCP conformance client scenarios (directly,
// through a plain reverse_proxy, through mcp_proxy) and decides whether
// mcp_proxy broke what a reverse proxy on another origin carries.
//
// usage: node conformance-client-report.mjs <scenarios.txt> <direct> <reverse_proxy> <mcp_proxy>
//
// scenarios.txt lists the scenarios the suite lists; each run dir holds the
// CLI's --output-dir as res/: <scenario>-<timestamp>/checks.json (a
// scenario's name may hold a slash: res/auth/metadata-default-<timestamp>).
// A scenario passes when its checks.json holds at least one check and none
// with status FAILURE (a WARNING, such as a reconnection a little late on a
// busy machine, passes); one that left no checks.json fails.
//
// Exit 1 when a scenario passes directly and through reverse_proxy but fails
// through mcp_proxy, or a check fails through mcp_proxy that does not fail
// through reverse_proxy, or the direct run passed nothing; each such
// scenario is printed on a line "RERUN <scenario>" as well. The last line
// is "conformance-client: N passed, M failed through mcp_proxy (...)".

import fs from "node:fs";
import path from "node:path";

const [listFile, ...dirs] = process.argv.slice(2);
if (dirs.length !== 3) {
  console.error("usage: conformance-client-report.mjs <scenarios.txt> <direct> <reverse_proxy> <mcp_proxy>");
  process.exit(2);
}
const names = fs.readFileSync(listFile, "utf8").split("\n").map((s) => s.trim()).filter(Boolean);
const dirRe = /^(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$/;

// load returns scenario -> {pass, failed: Set of failing check ids, note}
// from the newest result of each scenario under dir/res.
function load(dir) {
  const found = new Map();
  const walk = (rel) => {
    const abs = path.join(dir, "res", rel);
    if (!fs.existsSync(abs)) return;
    for (const ent of fs.readdirSync(abs, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      if (!ent.isDirectory()) continue;
      const sub = rel ? `${rel}/${ent.name}` : ent.name;
      const file = path.join(dir, "res", sub, "checks.json");
      const m = dirRe.exec(sub);
      if (m && fs.existsSync(file)) found.set(m[1], file);
      else walk(sub);
    }
  };
  walk("");
  const out = new Map();
  for (const [name, file] of found) {
    let checks;
    try {
      checks = JSON.parse(fs.readFileSync(file, "utf8"));
    } catch (e) {
      out.set(name, { pass: false, failed: new Set(), note: `unreadable checks.json: ${e.message}` });
      continue;
    }
    const failing = checks.filter((c) => c.status === "FAILURE");
    out.set(name, {
      pass: checks.length > 0 && failing.length === 0,
      failed: new Set(failing.map((c) => c.id)),
      note: failing.map((c) => `${c.id}: ${(c.errorMessage || c.description || "").slice(0, 160)}`).join("; "),
    });
  }
  return out;
}

const [direct, rp, mp] = dirs.map(load);
const missing = { pass: false, failed: new Set(), note: "no checks.json (the scenario did not run to its end)" };
const cell = (r) => (r.pass ? "pass" : "FAIL");
const width = Math.max(8, ...names.map((n) => n.length));
console.log(`${"scenario".padEnd(width)}  direct  reverse_proxy  mcp_proxy  note`);
const regressions = [];
for (const n of names) {
  const d = direct.get(n) ?? missing;
  const r = rp.get(n) ?? missing;
  const m = mp.get(n) ?? missing;
  const worse = [...m.failed].filter((id) => !r.failed.has(id));
  let note = "";
  if (d.pass && r.pass && !m.pass) note = "REGRESSION: fails only through mcp_proxy";
  else if (worse.length) note = `REGRESSION: fails through mcp_proxy only: ${worse.join(", ")}`;
  else if (!d.pass) note = "fails directly (not gated)";
  else if (!r.pass) note = "fails through any proxy on another origin (not gated)";
  if (note.startsWith("REGRESSION")) regressions.push(n);
  console.log(`${n.padEnd(width)}  ${cell(d).padEnd(6)}  ${cell(r).padEnd(13)}  ${cell(m).padEnd(9)}  ${note}`);
}
for (const n of regressions) {
  console.log(`\n  ${n} through mcp_proxy: ${(mp.get(n) ?? missing).note}`);
  console.log(`  ${n} through reverse_proxy: ${(rp.get(n) ?? missing).note || "passes"}`);
}
const count = (m) => names.filter((n) => m.get(n)?.pass).length;
let bad = regressions.length > 0;
if (count(direct) === 0) {
  console.log("\nERROR: the direct run passed no scenario; the harness is broken");
  bad = true;
}
if (regressions.length) {
  console.log(`\nERROR: mcp_proxy breaks ${regressions.length} scenario(s) a reverse proxy carries: ${regressions.join(", ")}`);
  for (const n of regressions) console.log(`RERUN ${n}`);
}
console.log(
  `\nconformance-client: ${count(mp)} passed, ${names.length - count(mp)} failed through mcp_proxy ` +
    `(direct ${count(direct)}/${names.length}, reverse_proxy ${count(rp)}/${names.length})`,
);
process.exit(bad ? 1 : 0);
