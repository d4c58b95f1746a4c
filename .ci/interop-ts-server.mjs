// A TypeScript SDK MCP server (McpServer over StreamableHTTPServerTransport,
// sessions on, an in-memory event store, retryInterval 200ms) whose tools
// end their POST's SSE answer before the answer, for .ci/interop-ts.mjs:
//   poll        progress 1, closes its stream (SEP-1699), 300ms later
//               progress 2, then its result;
//   poll_twice  the same, closing its stream twice;
//   poll_fast   progress 1, closes its stream, then at once progress 2 and
//               its result (stored while nobody listens: a resumption gets
//               them replayed);
//   poll_slow   closes its stream, then answers 8s later, silently;
//   poll_long   four times: closes its stream, 1.5s later progress; then
//               its result (6s, each step shorter than 5s);
//   break       progress 1, then destroys the TCP connection of its POST
//               once the event is stored and written, 500ms later progress
//               2, then its result;
//   late        its result 1s later, with no event before but the priming
//               event.
// Each result's text is "<tool> done". Listens on 127.0.0.1.
import http from "node:http";
import path from "node:path";
import { randomUUID } from "node:crypto";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// An EventStore (the SDK's interface) that keeps every event in order;
// ids are "<stream>_<sequence>".
class MemoryEventStore {
  events = [];
  seq = 0;
  async storeEvent(streamId, message) {
    const eventId = `${streamId}_${String(++this.seq).padStart(8, "0")}`;
    this.events.push({ eventId, streamId, message });
    return eventId;
  }
  async getStreamIdForEventId(eventId) {
    return this.events.find((e) => e.eventId === eventId)?.streamId;
  }
  async replayEventsAfter(lastEventId, { send }) {
    const i = this.events.findIndex((e) => e.eventId === lastEventId);
    if (i < 0) return "";
    const { streamId } = this.events[i];
    for (const e of this.events.slice(i + 1)) {
      if (e.streamId === streamId) await send(e.eventId, e.message);
    }
    return streamId;
  }
}

// startServer runs the server on a free loopback port: url, and close(),
// which ends its sessions and connections. stats counts the requests by
// method (GET resumptions included).
export async function startServer(sdkDir) {
  const sdk = (p) => import(path.join(sdkDir, "node_modules/@modelcontextprotocol/sdk/dist/esm", p));
  const { McpServer } = await sdk("server/mcp.js");
  const { StreamableHTTPServerTransport } = await sdk("server/streamableHttp.js");
  const transports = new Map(); // session id -> transport
  const posts = new Map(); // "<session> <request id>" -> the POST's ServerResponse
  const stats = { GET: 0, POST: 0, DELETE: 0 };

  function newSession() {
    const server = new McpServer({ name: "mcpgate-interop-ts-server", version: "1.0.0" });
    const progress = (extra, n) => extra._meta?.progressToken === undefined ? Promise.resolve()
      : extra.sendNotification({ method: "notifications/progress", params: { progressToken: extra._meta.progressToken, progress: n } });
    const close = (extra) => {
      if (!extra.closeSSEStream) throw new Error("no closeSSEStream: the client is older than 2025-11-25");
      extra.closeSSEStream();
    };
    const done = (name) => ({ content: [{ type: "text", text: `${name} done` }] });
    const tool = (name, fn) => server.registerTool(name, { description: name }, async (extra) => { await fn(extra); return done(name); });
    tool("poll", async (x) => { await progress(x, 1); close(x); await sleep(300); await progress(x, 2); });
    tool("poll_twice", async (x) => {
      await progress(x, 1); close(x); await sleep(300);
      await progress(x, 2); close(x); await sleep(300);
      await progress(x, 3);
    });
    tool("poll_fast", async (x) => { await progress(x, 1); close(x); await progress(x, 2); });
    tool("poll_slow", async (x) => { close(x); await sleep(8000); });
    tool("poll_long", async (x) => { for (let n = 1; n <= 4; n++) { close(x); await sleep(1500); await progress(x, n); } });
    tool("break", async (x) => {
      await progress(x, 1); // stored, and queued for the POST's stream
      await sleep(100); // written out
      posts.get(`${x.sessionId} ${x.requestId}`)?.socket?.destroy();
      await sleep(500);
      await progress(x, 2);
    });
    tool("late", () => sleep(1000));
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      eventStore: new MemoryEventStore(),
      retryInterval: 200,
      onsessioninitialized: (id) => transports.set(id, transport),
    });
    transport.onclose = () => transports.delete(transport.sessionId);
    return server.connect(transport).then(() => transport);
  }

  async function handle(req, res) {
    stats[req.method] = (stats[req.method] ?? 0) + 1;
    let body;
    if (req.method === "POST") {
      const chunks = [];
      for await (const c of req) chunks.push(c);
      try { body = JSON.parse(Buffer.concat(chunks).toString("utf8")); } catch { body = undefined; }
    }
    const sid = req.headers["mcp-session-id"];
    let transport = sid ? transports.get(sid) : undefined;
    if (!transport) {
      if (sid || req.method !== "POST" || body?.method !== "initialize") {
        res.writeHead(sid ? 404 : 400, { "content-type": "application/json" });
        res.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32001, message: "no such session" }, id: null }));
        return;
      }
      transport = await newSession();
    }
    const keys = (Array.isArray(body) ? body : [body]).filter((m) => m?.method && m.id !== undefined).map((m) => `${sid} ${m.id}`);
    for (const k of keys) posts.set(k, res);
    res.on("close", () => { for (const k of keys) if (posts.get(k) === res) posts.delete(k); });
    await transport.handleRequest(req, res, body);
  }

  const sockets = new Set();
  const srv = http.createServer((req, res) => handle(req, res).catch((e) => {
    if (!res.headersSent) { res.writeHead(500); res.end(String(e)); } else res.destroy();
  }));
  srv.on("connection", (s) => { sockets.add(s); s.on("close", () => sockets.delete(s)); });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${srv.address().port}/mcp`,
    port: srv.address().port,
    stats,
    async close() {
      for (const t of transports.values()) await t.close().catch(() => {});
      for (const s of sockets) s.destroy();
      await new Promise((r) => srv.close(r));
    },
  };
}
