// Interoperability of the TypeScript MCP SDK client with mcpgate: runs the
// same scenarios against the Go demo upstream directly and through Caddy
// configured by Caddyfile.example (ports replaced by free loopback ports),
// over Streamable HTTP (at the SDK's latest version and at 2024-11-05) and
// the legacy HTTP+SSE transport. Fails when a scenario fails directly, or
// passes directly and fails through the proxy.
//
// Usage: node .ci/interop-ts.mjs <caddy binary> <Caddyfile.example> <dir of node_modules with the SDK>
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

import { assert, deadline, freePort, sleep, startCaddy, text } from "./interop-lib.mjs";

const [caddyBin, caddyfile, sdkDir] = process.argv.slice(2);
const sdk = (p) => import(path.join(sdkDir, "node_modules/@modelcontextprotocol/sdk/dist/esm", p));
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
const { SSEClientTransport } = await sdk("client/sse.js");

// A TCP relay in front of target whose connections cut() resets.
async function relayTo(target) {
  const socks = new Set();
  const server = net.createServer((c) => {
    const u = net.connect(Number(target.port), target.hostname);
    socks.add(c); socks.add(u); c.pipe(u); u.pipe(c);
    const done = () => { c.destroy(); u.destroy(); socks.delete(c); socks.delete(u); };
    for (const s of [c, u]) { s.on("error", done); s.on("close", done); }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}${target.pathname}`,
    cut: () => { for (const s of socks) s.destroy(); },
    close: () => { for (const s of socks) s.destroy(); server.close(); },
  };
}

async function connect(kind, url, proto, opts = {}) {
  // The SDK offers its latest version; proto makes the initialize offer another.
  const fetchFn = (input, init) => {
    if (proto && typeof init?.body === "string" && init.body.includes('"method":"initialize"')) {
      init = { ...init, body: init.body.replace(/"protocolVersion":"[^"]*"/, `"protocolVersion":"${proto}"`) };
    }
    return fetch(input, init);
  };
  const client = new Client({ name: "mcpgate-interop", version: "1.0.0" }, { capabilities: {} });
  client.onerror = () => {};
  const Transport = kind === "sse" ? SSEClientTransport : StreamableHTTPClientTransport;
  const transport = new Transport(new URL(url), { fetch: fetchFn, ...opts });
  await deadline(client.connect(transport), 10000, "connect");
  return { client, transport };
}

const fast = { initialReconnectionDelay: 200, maxReconnectionDelay: 1000, reconnectionDelayGrowFactor: 1.5, maxRetries: 5 };

const scenarios = {
  async tools(c) {
    assert((await c.client.listTools()).tools.map((t) => t.name).sort().join() === "add,countdown,echo", "tools/list");
    await c.client.ping();
    assert(text(await c.client.callTool({ name: "echo", arguments: { text: "héllo" } })) === "héllo", "echo");
    const r = await c.client.callTool({ name: "add", arguments: { a: 2, b: 40 } });
    assert(r.structuredContent?.sum === 42, "add");
    await c.client.setLoggingLevel("debug");
  },
  async progress(c) {
    const prog = [];
    const r = await c.client.callTool({ name: "countdown", arguments: { from: 5, delay_ms: 50 } }, undefined, { onprogress: (p) => prog.push(p.progress) });
    assert(prog.join() === "1,2,3,4,5" && text(r) === "liftoff", `progress ${prog}`);
  },
  async cancellation(c) {
    const ac = new AbortController();
    const p = c.client.callTool({ name: "countdown", arguments: { from: 20, delay_ms: 200 } }, undefined, { signal: ac.signal });
    await sleep(500);
    ac.abort("cancelled");
    await p.then(() => assert(false, "not rejected"), () => {});
    assert(text(await c.client.callTool({ name: "echo", arguments: { text: "after" } })) === "after", "echo after cancel");
  },
  async resumability(c, kind, url, proto) {
    if (kind === "sse") return "skip";
    const relay = await relayTo(new URL(url));
    try {
      const { client } = await connect(kind, relay.url, proto, { reconnectionOptions: fast });
      const prog = [];
      const p = client.callTool({ name: "countdown", arguments: { from: 8, delay_ms: 250 } }, undefined,
        { onprogress: (x) => prog.push(x.progress), resetTimeoutOnProgress: true });
      for (let cut = 2; cut <= 6; cut += 4) {
        while (prog.length < cut) await sleep(10);
        relay.cut();
      }
      const r = await p;
      await client.close();
      assert(prog.join() === "1,2,3,4,5,6,7,8" && text(r) === "liftoff", `progress ${prog} after two cuts`);
    } finally { relay.close(); }
  },
  async reconnect(c, kind, url, proto) {
    if (kind !== "sse") return "skip";
    const relay = await relayTo(new URL(url));
    try {
      const { client } = await connect(kind, relay.url, proto);
      await client.ping();
      relay.cut();
      let ok = false;
      for (let i = 0; i < 16 && !ok; i++) {
        await sleep(500);
        ok = await deadline(client.ping(), 1500, "ping").then(() => true, () => false);
      }
      await client.close();
      assert(ok, "no answer once the legacy stream was reopened");
    } finally { relay.close(); }
  },
  async terminate(c, kind, url, proto) {
    if (kind === "sse") return "skip";
    const { client, transport } = await connect(kind, url, proto);
    const sid = transport.sessionId;
    await transport.terminateSession();
    const res = await fetch(url, { method: "POST", body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "ping" }),
      headers: { "content-type": "application/json", accept: "application/json, text/event-stream", "mcp-session-id": sid, "mcp-protocol-version": transport.protocolVersion } });
    await client.close();
    assert(res.status === 404, `a deleted session answered ${res.status}`);
  },
};

async function run(kind, url, proto) {
  const out = {};
  let c;
  try { c = await connect(kind, url, proto); } catch (e) { return { connect: `FAIL ${e.message}` }; }
  for (const [name, fn] of Object.entries(scenarios)) {
    try { out[name] = (await deadline(fn(c, kind, url, proto), 30000, name)) === "skip" ? "skip" : "pass"; }
    catch (e) { out[name] = `FAIL ${String(e.message).slice(0, 160)}`; }
  }
  await c.client.close();
  return out;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "mcpgate-interop-"));
const [site, admin, up1, up2] = [await freePort(), await freePort(), await freePort(), await freePort()];
const config = fs.readFileSync(caddyfile, "utf8")
  .replaceAll(":8080", `:${site}`).replaceAll("localhost:2019", `localhost:${admin}`)
  .replaceAll("9001", String(up1)).replaceAll("9002", String(up2));
const caddy = startCaddy(caddyBin, tmp, config);
// A run ended by timeout(1) takes its Caddy with it.
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => { caddy.kill(); process.exit(1); });
let failed = false;
try {
  await caddy.waitPort(site);
  await caddy.waitPort(up1);
  const cases = [
    ["streamable", "latest", `http://127.0.0.1:${up1}/`, `http://127.0.0.1:${site}/mcp`, undefined],
    ["streamable", "2024-11-05", `http://127.0.0.1:${up1}/`, `http://127.0.0.1:${site}/mcp`, "2024-11-05"],
    ["sse", "latest", `http://127.0.0.1:${up1}/sse`, `http://127.0.0.1:${site}/legacy/sse`, undefined],
  ];
  for (const [kind, label, direct, proxied, proto] of cases) {
    const d = await run(kind, direct, proto);
    const p = await run(kind, proxied, proto);
    console.log(`\n${kind} (${label})`);
    for (const name of new Set([...Object.keys(d), ...Object.keys(p)])) {
      // The demo and the SDK are pinned: a scenario that fails directly is a
      // failure too (of the demo), not a reason to pass the proxy.
      const bad = d[name] === "pass" && p[name] !== "pass";
      const broken = d[name] !== undefined && d[name] !== "pass" && d[name] !== "skip";
      failed ||= bad || broken;
      const why = bad ? "   <-- fails only through the proxy" : broken ? "   <-- fails directly" : "";
      console.log(`  ${name.padEnd(14)} direct: ${(d[name] ?? "-").padEnd(6)} proxied: ${p[name] ?? "-"}${why}`);
    }
  }
} catch (e) {
  console.log(`ERROR: ${e.stack}`);
  failed = true;
} finally {
  await caddy.stop();
  if (failed) console.log(`\ncaddy log (tail):\n${caddy.tail(8)}`);
  fs.rmSync(tmp, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
