// Interoperability of the TypeScript MCP SDK client with mcpgate: runs the
// same scenarios against the Go demo upstream directly and through Caddy
// configured by Caddyfile.example (ports replaced by free loopback ports),
// over Streamable HTTP (at the SDK's latest version and at 2024-11-05) and
// the legacy HTTP+SSE transport. Then calls to a TypeScript SDK server whose
// tools end their POST's SSE answer before the answer (they close it for
// the client to poll, SEP-1699, or break its connection;
// .ci/interop-ts-server.mjs), directly, through plain reverse_proxy as a
// control and through mcp_proxy (as is, with request_timeout 5s, with
// pin_tools), with the SDK's client and with a raw client that never
// resumes a stream (only mcp_proxy, resuming the upstream's stream itself,
// gets it its answers). Fails when a scenario fails directly, or passes
// directly and fails through the proxy (mcp_proxy).
//
// Usage: node .ci/interop-ts.mjs <caddy binary> <Caddyfile.example> <dir of node_modules with the SDK>
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

import { assert, deadline, freePort, sleep, startCaddy, text } from "./interop-lib.mjs";
import { startServer } from "./interop-ts-server.mjs";

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

// The scenarios against the TypeScript SDK server of interop-ts-server.mjs
// run at five hops: "direct", "reverse_proxy" (the control), "mcp_proxy",
// "mcp_proxy 5s" (request_timeout 5s) and "mcp_proxy pin" (pin_tools warn:
// events written anew). Each tool's progress, in order.
const hops = ["direct", "reverse_proxy", "mcp_proxy", "mcp_proxy 5s", "mcp_proxy pin"];
const polled = { poll: "1,2", poll_twice: "1,2,3", poll_fast: "1,2", poll_long: "1,2,3,4", break: "1,2" };
const viaMcpProxy = (hop) => hop.startsWith("mcp_proxy");

// rawCall opens a session at url and calls tool as a client that never
// resumes a stream: it reads the POST's SSE answer to its end (or its
// break, or 10s). Returns the answer's text (or undefined) and the progress.
async function rawCall(url, tool) {
  const h = { "content-type": "application/json", accept: "application/json, text/event-stream" };
  const post = (headers, msg, signal) => fetch(url, { method: "POST", headers, body: JSON.stringify({ jsonrpc: "2.0", ...msg }), signal });
  const init = await post(h, { id: 1, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "raw", version: "1" } } });
  await init.text();
  const hs = { ...h, "mcp-session-id": init.headers.get("mcp-session-id") ?? "", "mcp-protocol-version": "2025-11-25" };
  await (await post(hs, { method: "notifications/initialized" })).text();
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 10000);
  let body = "";
  try {
    const res = await post(hs, { id: 2, method: "tools/call", params: { name: tool, arguments: {}, _meta: { progressToken: "p" } } }, ac.signal);
    const dec = new TextDecoder();
    for await (const chunk of res.body) body += dec.decode(chunk, { stream: true });
  } catch { /* the stream broke, or 10s passed */ } finally { clearTimeout(timer); }
  await fetch(url, { method: "DELETE", headers: hs }).then((r) => r.text(), () => {});
  const msgs = body.split(/\r?\n\r?\n/)
    .map((ev) => ev.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n"))
    .filter((d) => d).map((d) => { try { return JSON.parse(d); } catch { return {}; } });
  return { answer: msgs.find((m) => m.id === 2)?.result?.content?.[0]?.text, progress: msgs.filter((m) => m.method === "notifications/progress").map((m) => m.params.progress).join() };
}

const pollScenarios = {
  ...Object.fromEntries(Object.entries(polled).map(([tool, want]) => [tool, async (c, hop) => {
    const prog = [];
    const resumed = c.resumed;
    const r = await c.client.callTool({ name: tool, arguments: {} }, undefined, { onprogress: (p) => prog.push(p.progress) });
    assert(text(r) === `${tool} done` && prog.join() === want, `"${text(r)}", progress ${prog}`);
    // mcp_proxy resumed the upstream's stream itself: the client did not.
    if (viaMcpProxy(hop)) assert(c.resumed === resumed, `the client resumed the stream ${c.resumed - resumed} times`);
  }])),
  async poll_slow(c, hop) {
    const t0 = Date.now();
    const r = await c.client.callTool({ name: "poll_slow", arguments: {} }).then(text, (e) => e);
    const ms = Date.now() - t0;
    // The error, not the time, tells the deadline from the answer (at 8s);
    // only a lower bound holds on a loaded machine.
    if (hop === "mcp_proxy 5s") assert(r?.code === -32001 && ms >= 4500, `${r} after ${ms}ms, not the deadline's -32001 at 5s`);
    else assert(r === "poll_slow done" && ms >= 7500, `${r} after ${ms}ms`);
  },
  // The client's own connection breaks after the priming event: it
  // resumes the stream from that event's id.
  async cut(c) {
    const relay = await relayTo(new URL(c.url));
    let client;
    try {
      ({ client } = await connect("streamable", relay.url, undefined, { reconnectionOptions: fast }));
      const p = client.callTool({ name: "late", arguments: {} }, undefined, { timeout: 10000 });
      await sleep(300);
      relay.cut();
      const r = await p;
      assert(text(r) === "late done", `"${text(r)}"`);
    } finally { await client?.close(); relay.close(); }
  },
  // Only mcp_proxy gets a client that does not resume streams its answer.
  ...Object.fromEntries(["poll", "break"].map((tool) => [`raw_${tool}`, async (c, hop) => {
    const { answer, progress } = await rawCall(c.url, tool);
    if (viaMcpProxy(hop)) assert(answer === `${tool} done` && progress === "1,2", `answer ${answer}, progress ${progress}`);
    else assert(answer === undefined, `answered without a resumption: ${answer}`);
    return answer === undefined ? "no answer" : "answered";
  }])),
};

async function runPolling(hop, url) {
  const out = {};
  const c = { url, resumed: 0 };
  // Counts the client's own resumptions (a GET with Last-Event-ID).
  const fetchFn = (input, init) => {
    if (init?.method === "GET" && new Headers(init.headers).has("last-event-id")) c.resumed++;
    return fetch(input, init);
  };
  try { Object.assign(c, await connect("streamable", url, undefined, { fetch: fetchFn })); } catch (e) { return { connect: `FAIL ${e.message}` }; }
  for (const [name, fn] of Object.entries(pollScenarios)) {
    try {
      const note = await deadline(fn(c, hop), 30000, name);
      out[name] = note ? `pass (${note})` : "pass";
    } catch (e) { out[name] = `FAIL ${String(e.message).slice(0, 160)}`; }
  }
  await c.client.close();
  return out;
}

// reportPolling prints the results of every hop; true when a scenario fails
// directly, or passes directly and fails through mcp_proxy (the control,
// reverse_proxy, only reports).
function reportPolling(res) {
  let failed = false;
  const pass = (v) => v?.startsWith("pass");
  console.log(`\nstreamable, TypeScript SDK server closing or breaking its streams\n  ${"".padEnd(12)} ${hops.map((h) => h.padEnd(17)).join(" ")}`);
  for (const name of new Set(hops.flatMap((h) => Object.keys(res[h])))) {
    const d = res.direct[name];
    const bad = pass(d) && hops.some((h) => viaMcpProxy(h) && !pass(res[h][name]));
    const broken = d !== undefined && !pass(d);
    const control = pass(d) && !pass(res.reverse_proxy[name]);
    failed ||= bad || broken;
    const why = bad ? "   <-- fails only through mcp_proxy" : broken ? "   <-- fails directly" : control ? "   (fails through reverse_proxy)" : "";
    const cell = (v) => (v === undefined ? "-" : pass(v) ? v : "FAIL").padEnd(17);
    console.log(`  ${name.padEnd(12)} ${hops.map((h) => cell(res[h][name])).join(" ")}${why}`);
    for (const h of hops) if (!pass(res[h][name]) && res[h][name]) console.log(`      ${h}: ${res[h][name]}`);
  }
  return failed;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "mcpgate-interop-"));
const [site, admin, up1, up2] = [await freePort(), await freePort(), await freePort(), await freePort()];
const ts = await startServer(sdkDir);
// Beside Caddyfile.example's sites, one per proxied hop to the TypeScript server.
const hopPorts = Object.fromEntries(await Promise.all(hops.slice(1).map(async (h) => [h, await freePort()])));
const hopSite = (port, directive, block = "") => `\nhttp://127.0.0.1:${port} {\n\tbind 127.0.0.1\n\t${directive} 127.0.0.1:${ts.port}${block}\n}\n`;
const config = fs.readFileSync(caddyfile, "utf8")
  .replaceAll(":8080", `:${site}`).replaceAll("localhost:2019", `localhost:${admin}`)
  .replaceAll("9001", String(up1)).replaceAll("9002", String(up2)) +
  hopSite(hopPorts.reverse_proxy, "reverse_proxy") + hopSite(hopPorts.mcp_proxy, "mcp_proxy") +
  hopSite(hopPorts["mcp_proxy 5s"], "mcp_proxy", " {\n\t\trequest_timeout 5s\n\t}") +
  hopSite(hopPorts["mcp_proxy pin"], "mcp_proxy", " {\n\t\tpin_tools warn\n\t}");
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
  const res = {};
  for (const hop of hops) {
    if (hop !== "direct") await caddy.waitPort(hopPorts[hop]);
    res[hop] = await runPolling(hop, hop === "direct" ? ts.url : `http://127.0.0.1:${hopPorts[hop]}/mcp`);
  }
  failed = reportPolling(res) || failed;
} catch (e) {
  console.log(`ERROR: ${e.stack}`);
  failed = true;
} finally {
  await ts.close();
  await caddy.stop();
  if (failed) console.log(`\ncaddy log (tail):\n${caddy.tail(8)}`);
  fs.rmSync(tmp, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
