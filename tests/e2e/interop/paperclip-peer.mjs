// Paperclip's own TypeScript bridge halves, for the interop tests (queue_v1 both ways).
//   node paperclip-peer.mjs host QUEUE_DIR         Paperclip's host worker; echoes requests
//   node paperclip-peer.mjs gateway-source FILE    writes Paperclip's gateway source to FILE
// ADAPTER_UTILS names the installed @paperclipai/adapter-utils folder.
import { pathToFileURL } from "node:url";
import { writeFile } from "node:fs/promises";
import path from "node:path";

const lib = await import(
  pathToFileURL(path.join(process.env.ADAPTER_UTILS, "dist/sandbox-callback-bridge.js")).href
);
const [mode, target] = process.argv.slice(2);

if (mode === "gateway-source") {
  await writeFile(target, lib.getSandboxCallbackBridgeServerSource());
} else if (mode === "host") {
  const worker = await lib.startSandboxCallbackBridgeWorker({
    client: lib.createFileSystemSandboxCallbackBridgeQueueClient(),
    queueDir: target,
    authorizeRequest: () => null,
    handleRequest: async (request) => ({
      status: 201,
      headers: { "content-type": "application/json", etag: '"paperclip-host"' },
      body: JSON.stringify({
        method: request.method,
        path: request.path,
        query: request.query,
        body: Buffer.isBuffer(request.body) ? request.body.toString("utf8") : request.body,
      }),
    }),
  });
  console.log("paperclip host worker ready");
  const stop = async () => {
    await worker.stop({ drainTimeoutMs: 1000 });
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} else {
  console.error("usage: paperclip-peer.mjs host QUEUE_DIR | gateway-source FILE");
  process.exit(2);
}
