// The OAuth flow of the TypeScript MCP SDK client through mcp_auth and
// mcp_proxy: Caddy (mcp_auth under /mcp in front of mcp_proxy to the demo
// upstream, once with the README's matcher, once inside handle_path with
// the metadata served beside it) and an auto-approving
// authorization server on loopback (RFC 8414 metadata, RFC 7591
// registration, authorization code with PKCE S256 and the RFC 8707
// resource, refresh tokens, RS256 JWTs whose keys it serves as a JWKS).
//
// Scenarios: the first request gets 401 and the client discovers the
// authorization server from resource_metadata, registers, authorizes and
// opens a session (tools/list, tools/call); a tool needing a scope the
// token lacks gets 403 insufficient_scope and the client steps up, keeping
// the scopes it held; an expired token gets 401 invalid_token and the
// client refreshes it, keeping its session; another user's token with the
// session's id gets 404. There is no "directly" for these: the upstream
// has no authorization of its own; any scenario failing fails the run.
//
// Usage: node .ci/interop-ts-auth.mjs <caddy binary> <dir of node_modules with the SDK>
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";

import { assert, deadline, freePort, startCaddy, text } from "./interop-lib.mjs";

const [caddyBin, sdkDir] = process.argv.slice(2);
const sdk = (p) => import(path.join(sdkDir, "node_modules/@modelcontextprotocol/sdk/dist/esm", p));
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");
const { UnauthorizedError } = await sdk("client/auth.js");

// An authorization server that approves every request for `user` at once.
async function startAuthServer() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 });
  const jwk = { ...publicKey.export({ format: "jwk" }), kid: "k1", alg: "RS256", use: "sig" };
  const b64 = (s) => Buffer.from(s).toString("base64url");
  const as = { user: "alice", clients: new Map(), codes: new Map(), refreshes: new Map(), log: [] };
  as.mint = (claims) => {
    const signed = `${b64(JSON.stringify({ alg: "RS256", typ: "JWT", kid: "k1" }))}.${b64(JSON.stringify(claims))}`;
    return `${signed}.${crypto.sign("sha256", Buffer.from(signed), privateKey).toString("base64url")}`;
  };
  as.claims = (user, resource, scope, ttl = 3600) => {
    const now = Math.floor(Date.now() / 1000);
    return { iss: as.issuer, sub: user, aud: resource, scope, iat: now, nbf: now, exp: now + ttl };
  };
  const json = (res, status, v) => { res.writeHead(status, { "content-type": "application/json" }); res.end(JSON.stringify(v)); };
  const oauthError = (res, error, description) => json(res, 400, { error, error_description: description });
  const body = (req) => new Promise((r) => { let b = ""; req.on("data", (c) => (b += c)); req.on("end", () => r(b)); });
  const tokens = (res, g) => {
    const refresh = crypto.randomUUID();
    as.refreshes.set(refresh, g);
    json(res, 200, { access_token: as.mint(as.claims(g.user, g.resource, g.scope)), token_type: "Bearer", expires_in: 3600, refresh_token: refresh, scope: g.scope });
  };
  const server = http.createServer(async (req, res) => {
    const u = new URL(req.url, as.issuer);
    as.log.push(`${req.method} ${u.pathname}`);
    if (req.method === "GET" && u.pathname === "/.well-known/oauth-authorization-server") {
      return json(res, 200, {
        issuer: as.issuer, authorization_endpoint: `${as.issuer}/authorize`, token_endpoint: `${as.issuer}/token`,
        registration_endpoint: `${as.issuer}/register`, jwks_uri: `${as.issuer}/jwks`, response_types_supported: ["code"],
        grant_types_supported: ["authorization_code", "refresh_token"], code_challenge_methods_supported: ["S256"],
        token_endpoint_auth_methods_supported: ["none"],
      });
    }
    if (req.method === "GET" && u.pathname === "/jwks") return json(res, 200, { keys: [jwk] });
    if (req.method === "POST" && u.pathname === "/register") {
      const md = JSON.parse(await body(req));
      if (!Array.isArray(md.redirect_uris) || md.redirect_uris.length === 0) return oauthError(res, "invalid_redirect_uri", "no redirect_uris");
      const client = { ...md, client_id: crypto.randomUUID(), client_id_issued_at: Math.floor(Date.now() / 1000), token_endpoint_auth_method: "none" };
      as.clients.set(client.client_id, client);
      return json(res, 201, client);
    }
    if (req.method === "GET" && u.pathname === "/authorize") {
      const q = u.searchParams;
      const client = as.clients.get(q.get("client_id"));
      if (!client || !client.redirect_uris.includes(q.get("redirect_uri"))) return oauthError(res, "invalid_request", "unknown client or redirect_uri");
      if (q.get("response_type") !== "code" || q.get("code_challenge_method") !== "S256" || !q.get("code_challenge")) return oauthError(res, "invalid_request", "PKCE S256 required");
      if (!q.get("resource")) return oauthError(res, "invalid_target", "resource required");
      const code = crypto.randomUUID();
      as.codes.set(code, { user: as.user, client: client.client_id, redirect: q.get("redirect_uri"), resource: q.get("resource"), scope: q.get("scope") ?? "", challenge: q.get("code_challenge") });
      as.log.push(`  scope=${q.get("scope")} resource=${q.get("resource")}`);
      const to = new URL(q.get("redirect_uri"));
      to.searchParams.set("code", code);
      if (q.get("state")) to.searchParams.set("state", q.get("state"));
      res.writeHead(302, { location: to.href });
      return res.end();
    }
    if (req.method === "POST" && u.pathname === "/token") {
      const f = new URLSearchParams(await body(req));
      as.log.push(`  grant_type=${f.get("grant_type")} resource=${f.get("resource")}`);
      if (f.get("grant_type") === "authorization_code") {
        const g = as.codes.get(f.get("code"));
        as.codes.delete(f.get("code"));
        const sum = crypto.createHash("sha256").update(f.get("code_verifier") ?? "").digest("base64url");
        if (!g || g.client !== f.get("client_id") || g.redirect !== f.get("redirect_uri") || sum !== g.challenge) return oauthError(res, "invalid_grant", "bad code, client, redirect_uri or verifier");
        if (f.get("resource") !== g.resource) return oauthError(res, "invalid_target", "resource differs from the authorization request's");
        return tokens(res, g);
      }
      if (f.get("grant_type") === "refresh_token") {
        const g = as.refreshes.get(f.get("refresh_token"));
        as.refreshes.delete(f.get("refresh_token"));
        if (!g || g.client !== f.get("client_id")) return oauthError(res, "invalid_grant", "unknown refresh token");
        if (f.get("resource") && f.get("resource") !== g.resource) return oauthError(res, "invalid_target", "another resource");
        return tokens(res, g);
      }
      return oauthError(res, "unsupported_grant_type", f.get("grant_type") ?? "");
    }
    res.writeHead(404);
    res.end();
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  as.issuer = `http://127.0.0.1:${server.address().port}`;
  as.close = () => { server.closeAllConnections(); server.close(); };
  return as;
}

// An OAuthClientProvider that keeps everything in memory and, instead of
// sending a user to the authorization URL, follows it itself and hands the
// code to the transport.
class Provider {
  constructor() {
    this.redirectUrl = "http://127.0.0.1:1/callback";
    this.clientMetadata = { client_name: "mcpgate-interop-auth", redirect_uris: [this.redirectUrl], grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"], token_endpoint_auth_method: "none" };
    this.authorizations = [];
  }
  clientInformation() { return this.client; }
  saveClientInformation(c) { this.client = c; }
  tokens() { return this.saved; }
  saveTokens(t) { this.saved = t; }
  saveCodeVerifier(v) { this.verifier = v; }
  codeVerifier() { return this.verifier; }
  invalidateCredentials(what) {
    if (what === "all" || what === "client") this.client = undefined;
    if (what === "all" || what === "tokens") this.saved = undefined;
  }
  async redirectToAuthorization(url) {
    this.authorizations.push(url.searchParams.get("scope"));
    const res = await fetch(url, { redirect: "manual" });
    const to = new URL(res.headers.get("location") ?? "", url);
    const code = to.searchParams.get("code");
    if (res.status !== 302 || !code) throw new Error(`authorize: ${res.status} ${await res.text()}`);
    await this.transport.finishAuth(code);
  }
}

// withAuth runs fn again after an authorization the SDK ended with
// UnauthorizedError (it returns "REDIRECT" even when finishAuth has
// already got the token).
async function withAuth(fn) {
  for (let i = 0; ; i++) {
    try { return await fn(); } catch (e) { if (!(e instanceof UnauthorizedError) || i === 2) throw e; }
  }
}

async function connect(url, provider) {
  return withAuth(async () => {
    const client = new Client({ name: "mcpgate-interop-auth", version: "1.0.0" }, { capabilities: {} });
    client.onerror = () => {};
    const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
    provider.transport = transport;
    try { await deadline(client.connect(transport), 10000, "connect"); } catch (e) { await client.close().catch(() => {}); throw e; }
    return { client, transport };
  });
}

const post = (url, tok, sid, version, msg) => fetch(url, { method: "POST", body: JSON.stringify(msg), headers: {
  "content-type": "application/json", accept: "application/json, text/event-stream", authorization: `Bearer ${tok}`,
  "mcp-session-id": sid, "mcp-protocol-version": version } });

function scenarios(as, endpoint, provider) {
  const resource = endpoint;
  let c;
  return {
    async discovery() {
      const res = await fetch(endpoint, { method: "POST", body: "{}", headers: { "content-type": "application/json" } });
      const chal = res.headers.get("www-authenticate") ?? "";
      const md = new URL("/.well-known/oauth-protected-resource/mcp", endpoint).href;
      assert(res.status === 401 && chal.includes(`resource_metadata="${md}"`), `401 ${res.status} ${chal}`);
      const doc = await (await fetch(md)).json();
      assert(doc.resource === resource && doc.authorization_servers?.[0] === as.issuer, `metadata ${JSON.stringify(doc)}`);
    },
    async authorize() {
      c = await connect(endpoint, provider);
      assert(provider.client?.client_id && as.clients.has(provider.client.client_id), "the client registered");
      assert(provider.authorizations.join() === "mcp:read", `authorized for ${provider.authorizations}`);
      assert((await c.client.listTools()).tools.map((t) => t.name).sort().join() === "add,countdown,echo", "tools/list");
      assert(text(await c.client.callTool({ name: "echo", arguments: { text: "authorized" } })) === "authorized", "echo");
    },
    async stepUp() {
      // With a refresh token, the SDK (1.32.2) answers 403
      // insufficient_scope with a refresh_token grant, which cannot widen
      // the scope, instead of authorizing again for the challenge's
      // scopes, and gives up with "Server returned 403 after trying
      // upscoping": step-up works only for a client holding none.
      const held = provider.saved;
      provider.saved = { ...held, refresh_token: undefined };
      const before = provider.authorizations.length;
      const r = await withAuth(() => c.client.callTool({ name: "add", arguments: { a: 2, b: 40 } }));
      assert(r.structuredContent?.sum === 42, "add after step-up");
      assert(provider.authorizations.length > before, "no new authorization");
      // The scopes held before are kept: echo needs no new authorization.
      const n = provider.authorizations.length;
      assert(text(await c.client.callTool({ name: "echo", arguments: { text: "still" } })) === "still", "echo after step-up");
      assert(provider.authorizations.length === n, `authorized again for ${provider.authorizations.slice(n)}`);
    },
    async refresh() {
      const sid = c.transport.sessionId;
      provider.saved = { ...provider.saved, access_token: as.mint(as.claims("alice", resource, "mcp:read mcp:admin", -120)) };
      const grants = as.log.filter((l) => l.includes("grant_type=refresh_token")).length;
      assert(text(await withAuth(() => c.client.callTool({ name: "echo", arguments: { text: "refreshed" } }))) === "refreshed", "echo");
      assert(as.log.filter((l) => l.includes("grant_type=refresh_token")).length === grants + 1, "no refresh_token grant");
      assert(c.transport.sessionId === sid, "the session changed");
    },
    async binding() {
      const v = c.transport.protocolVersion;
      const ping = { jsonrpc: "2.0", id: 9, method: "ping" };
      const own = await post(endpoint, provider.saved.access_token, c.transport.sessionId, v, ping);
      assert(own.status === 200, `alice's own ping: ${own.status}`);
      const bob = await post(endpoint, as.mint(as.claims("bob", resource, "mcp:read mcp:admin")), c.transport.sessionId, v, ping);
      assert(bob.status === 404, `bob with alice's session: ${bob.status} ${await bob.text()}`);
      await c.client.close();
    },
  };
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "mcpgate-interop-auth-"));
const [site, pathSite, up] = [await freePort(), await freePort(), await freePort()];
const as = await startAuthServer();
const authBlock = (matcher = "") => `mcp_auth ${matcher}{
			issuer ${as.issuer}
			jwks_url ${as.issuer}/jwks
			require_scope mcp:read
			scope tools/call:add mcp:admin
		}`;
// The README's matcher, and handle_path with the metadata served beside it.
const caddy = startCaddy(caddyBin, tmp, `{
	admin off
	auto_https off
}
:${site} {
	@auth path /mcp* /.well-known/oauth-protected-resource*
	${authBlock("@auth ")}
	mcp_proxy /mcp* 127.0.0.1:${up} {
		session_key interop-auth-passphrase-of-32-characters
	}
}
:${pathSite} {
	handle /.well-known/oauth-protected-resource* {
		${authBlock()}
	}
	handle_path /mcp* {
		${authBlock()}
		mcp_proxy 127.0.0.1:${up} {
			session_key interop-auth-passphrase-of-32-characters
		}
	}
}
http://127.0.0.1:${up} {
	bind 127.0.0.1
	mcp_demo
}
`);
// A run ended by timeout(1) takes its Caddy with it.
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => { caddy.kill(); as.close(); fs.rmSync(tmp, { recursive: true, force: true }); process.exit(1); });
let failed = false;
try {
  for (const p of [site, pathSite, up]) await caddy.waitPort(p);
  for (const [label, port] of [["matcher", site], ["handle_path", pathSite]]) {
    const endpoint = `http://127.0.0.1:${port}/mcp`;
    console.log(`\noauth (streamable, mcp_auth under /mcp by ${label})`);
    for (const [name, fn] of Object.entries(scenarios(as, endpoint, new Provider()))) {
      let res = "pass";
      try { await deadline(fn(), 20000, name); } catch (e) { res = `FAIL ${String(e.message).slice(0, 300)}`; failed = true; }
      console.log(`  ${name.padEnd(14)} proxied: ${res}`);
      if (res !== "pass") break; // each scenario builds on the one before
    }
  }
} catch (e) {
  console.log(`ERROR: ${e.stack}`);
  failed = true;
} finally {
  await caddy.stop();
  as.close();
  if (failed) {
    console.log(`\nauthorization server log:\n  ${as.log.join("\n  ")}`);
    console.log(`\ncaddy log (tail):\n${caddy.tail(8)}`);
  }
  fs.rmSync(tmp, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
