// Helpers of the .ci/interop-*.mjs scripts: timing and assertions, free
// loopback ports, and a Caddy run with a Caddyfile in a directory of its own.
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const deadline = (p, ms, what) => Promise.race([p, sleep(ms).then(() => { throw new Error(`timeout ${ms}ms: ${what}`); })]);
export const assert = (c, m) => { if (!c) throw new Error(`assertion failed: ${m}`); };
export const text = (r) => (r.content ?? []).map((c) => c.text ?? `[${c.type}]`).join(" ");

export async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

// startCaddy runs bin with config as its Caddyfile, its data and log in
// dir. waitPort waits for it to listen; stop ends it and waits; tail is
// the end of its log.
export function startCaddy(bin, dir, config) {
  fs.writeFileSync(path.join(dir, "Caddyfile"), config);
  const log = path.join(dir, "caddy.log");
  const caddy = spawn(bin, ["run", "--config", path.join(dir, "Caddyfile"), "--adapter", "caddyfile"], {
    env: { ...process.env, XDG_DATA_HOME: dir, XDG_CONFIG_HOME: dir }, stdio: ["ignore", fs.openSync(log, "w"), fs.openSync(log, "a")],
  });
  return {
    kill: () => caddy.kill("SIGKILL"),
    async waitPort(port) {
      for (let i = 0; i < 300; i++) {
        if (caddy.exitCode !== null) throw new Error(`caddy exited: ${fs.readFileSync(log, "utf8").slice(-2000)}`);
        const ok = await new Promise((r) => {
          const c = net.connect(port, "127.0.0.1", () => { c.destroy(); r(true); });
          c.on("error", () => r(false));
        });
        if (ok) return;
        await sleep(100);
      }
      throw new Error(`nothing listens on ${port}`);
    },
    async stop() {
      caddy.kill("SIGTERM");
      await new Promise((r) => (caddy.exitCode !== null ? r() : caddy.on("exit", r)));
    },
    tail: (n) => fs.readFileSync(log, "utf8").split("\n").slice(-n).map((l) => l.slice(0, 300)).join("\n"),
  };
}
