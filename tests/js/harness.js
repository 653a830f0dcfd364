// Starts a real spritesd for the official JS client's tests and gives back a client.
// Node 20 has no WebSocket constructor that takes headers; undici's is the same
// implementation Node 24 ships as its global, so it stands in for it here.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync, rmSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { WebSocket } from 'undici';
import { SpritesClient } from '@fly/sprites';

globalThis.WebSocket = WebSocket;

const root = resolve(import.meta.dirname, '..', '..');
const bin = process.env.SPRITESD_BIN || join(root, 'target', 'debug', 'spritesd');
const imageDir = process.env.SPRITES_TEST_IMAGE_DIR || '/var/cache/sprites/images';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function startServer(extraArgs = []) {
  const tmp = mkdtempSync('/tmp/spjs');
  const dataDir = join(tmp, 'd');
  const proc = spawn(bin, ['serve', '--data-dir', dataDir, '--image-dir', imageDir, '--listen', '127.0.0.1:0', '--storage-pool', 'none', ...extraArgs], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  const addrFile = join(dataDir, 'spritesd.addr');
  for (let i = 0; i < 1200 && !existsSync(addrFile); i++) {
    if (proc.exitCode !== null) throw new Error(`spritesd exited: ${log}`);
    await sleep(50);
  }
  const baseURL = `http://${readFileSync(addrFile, 'utf8').trim()}`;
  const token = readFileSync(join(dataDir, 'admin-token'), 'utf8').trim();
  const client = new SpritesClient(token, { baseURL });
  return {
    baseURL,
    token,
    client,
    log: () => log,
    async stop() {
      // Deleting through the API stops every sprite; then the server goes.
      try {
        const list = await client.listSprites();
        for (const s of list.sprites) await client.deleteSprite(s.name);
      } catch (e) {
        console.error('cleanup:', e);
      }
      proc.kill('SIGTERM');
      await new Promise((r) => proc.once('exit', r));
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}

// Collects a readable stream into a string.
export function collect(stream) {
  let s = '';
  stream.on('data', (d) => { s += d.toString(); });
  return () => s;
}

export { sleep };
