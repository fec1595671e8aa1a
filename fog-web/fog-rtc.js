// fog's WebRTC client for browsers: no build step, no dependencies.
//
// It registers at a fog signal server with a fresh Ed25519 key (WebCrypto), offers a WebRTC
// data channel to a fog node (by peer id or name) through the signal server, and accepts the
// answer only when the node signed it with its key. The signature covers the whole SDP, and
// so the DTLS fingerprint in it: the encrypted channel ends at the node that owns the key.
//
//   import { connect } from "./fog-rtc.js";
//   const { channel, peer } = await connect({ signal: "ws://host:7600/ws", peer: "name" });
//   channel.send("hello");
//
// A fog node treats each data channel as a stream. Data channels have no half-close, so an
// empty message ends the sender's direction: `channel.send(new Uint8Array(0))`.

const BASE32 = "abcdefghijklmnopqrstuvwxyz234567";

function base32(bytes) {
  let bits = 0, value = 0, out = "";
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32[(value << (5 - bits)) & 31];
  return out;
}

function unbase32(text) {
  let bits = 0, value = 0;
  const out = [];
  for (const c of text.toLowerCase()) {
    const digit = BASE32.indexOf(c);
    if (digit < 0) throw new Error(`not a peer id: ${text}`);
    value = (value << 5) | digit;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 255);
      bits -= 8;
    }
  }
  return new Uint8Array(out);
}

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

function unhex(text) {
  if (!/^([0-9a-f]{2})*$/i.test(text)) throw new Error("not hex");
  return new Uint8Array(text.match(/../g)?.map((h) => parseInt(h, 16)) ?? []);
}

const utf8 = (text) => new TextEncoder().encode(text);

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const random = (n) => crypto.getRandomValues(new Uint8Array(n));

/** The messages of one signal-server session, one at a time, with a deadline. */
class SignalSocket {
  constructor(url) {
    this.queue = [];
    this.waiting = null;
    this.ws = new WebSocket(url);
    this.closed = new Promise((resolve) => this.ws.addEventListener("close", resolve));
    this.ws.addEventListener("message", (event) => {
      this.queue.push(JSON.parse(event.data));
      this.waiting?.();
    });
    this.ws.addEventListener("close", () => this.waiting?.());
  }

  send(message) {
    this.ws.send(JSON.stringify(message));
  }

  /** The next message that `accept` takes (others are skipped); fails after `ms`. */
  async next(accept, ms, what) {
    const deadline = Date.now() + ms;
    for (;;) {
      const index = this.queue.findIndex(accept);
      if (index >= 0) return this.queue.splice(index, 1)[0];
      if (this.ws.readyState >= WebSocket.CLOSING) throw new Error(`signal server closed while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${what} within ${ms} ms`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiting = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }
}

/** Waits until ICE gathering is complete, so the SDP carries every candidate. */
function gathered(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

/**
 * Connects to the fog node `peer` (peer id or registered name) through the signal server at
 * `signal` (a ws:// or wss:// URL). Resolves to `{ channel, pc, peer, signal }` once the data
 * channel is open; `peer` is the node's verified peer id. Rejects with a clear error when the
 * node is unknown, refuses, or answers without a valid signature.
 */
export async function connect({ signal, peer, label = "fog", iceServers = [], timeoutMs = 20000 }) {
  const socket = new SignalSocket(signal);
  const challenge = await socket.next((m) => m.type === "challenge", timeoutMs, "challenge");
  const keys = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
  const publicKey = new Uint8Array(await crypto.subtle.exportKey("raw", keys.publicKey));
  const me = base32(publicKey);
  const sign = async (bytes) => hex(new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, keys.privateKey, bytes)));
  socket.send({
    type: "register",
    peer: me,
    name: null,
    signature: await sign(concat(utf8("fog-register-v1:"), unhex(challenge.nonce), publicKey)),
  });
  const registered = await socket.next((m) => m.type === "registered" || m.type === "error", timeoutMs, "registration");
  if (registered.type === "error") throw new Error(`registration refused: ${registered.message}`);

  const pc = new RTCPeerConnection({ iceServers });
  const channel = pc.createDataChannel(label);
  channel.binaryType = "arraybuffer";
  const open = new Promise((resolve, reject) => {
    channel.addEventListener("open", resolve);
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed") reject(new Error("WebRTC connection failed"));
    });
  });
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc, 5000);
  const session = hex(random(16));
  const sdp = pc.localDescription.sdp;
  socket.send({
    type: "offer",
    to: peer,
    session,
    body: {
      secret: hex(random(32)),
      candidates: [],
      protocols: ["rtc"],
      trickle: false,
      rtc: { sdp, signature: await sign(utf8(`fog-rtc-v1:${session}:${sdp}`)) },
    },
  });
  const reply = await socket.next(
    (m) => m.session === session && ["answer", "reject", "error"].includes(m.type),
    timeoutMs,
    "answer",
  );
  if (reply.type === "error") throw new Error(`${reply.code}: ${reply.message}`);
  if (reply.type === "reject") throw new Error(`the peer refused: ${reply.reason}`);
  const answer = reply.body.rtc;
  if (!answer) throw new Error("the peer answered without WebRTC");
  if (/^[a-z2-7]{52}$/.test(peer) && reply.from !== peer) throw new Error(`${reply.from} answered for ${peer}`);
  const nodeKey = await crypto.subtle.importKey("raw", unbase32(reply.from), { name: "Ed25519" }, false, ["verify"]);
  const valid = await crypto.subtle.verify(
    { name: "Ed25519" },
    nodeKey,
    unhex(answer.signature),
    utf8(`fog-rtc-v1:${session}:${answer.sdp}`),
  );
  if (!valid) throw new Error(`the answer is not signed by ${reply.from}: wrong key or altered`);
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  await Promise.race([
    open,
    new Promise((_, reject) => setTimeout(() => reject(new Error("the data channel did not open")), timeoutMs)),
  ]);
  return { channel, pc, peer: reply.from, signal: socket };
}
