#!/usr/bin/env node
// A client of keyhold-signd for the integration tests, written from README's
// protocol (4-byte big-endian length + one JSON object) with node's own net
// and tls, and checks by an independent Ethereum library (ethers v6): every
// raw transaction is parsed by ethers and its recovered sender must equal the
// expected address; EIP-191 signatures must recover likewise.
//
//   call <url> <requests-json-array>        one connection, print each reply (JSON lines)
//   eth <url> <address>                     address/status, 3 tx types, EIP-191, refusals
//   eip155 <url> <key> <raw-tx-hex>         the EIP-155 example tx must sign to exactly raw
//   policy <url>                            the policy test's expectations (signd-policy.sh)
//   rate <url> <key> <n> <burst> <rate/s>   n address calls back to back: at most the bucket's worth succeed
//   conncap <url> <cap>                     cap connections are served, one more is refused
//   garbage <url>                           bad frames: error or closed, and the server keeps serving
//   pipeline <url> <n>                      n requests in one write: n replies, in order
//   drain <url> <pid>                       a request in flight at SIGTERM is answered, then closed
//   idle <url>                              an idle connection, and a stalled frame, are closed by the server
//   bench <url> <method> <n> <conns>        prints requests per second (no assertion)
//   sign-verify <url> <key> <algorithm>     sign through the protocol, verify with node's crypto/noble
//
// URLs: unix:/path, tcp://host:port, tls://host:port (CA in $KH_TLS_CA).
// Exit 0 when every check held; 1 with "FAIL: ..." on stderr otherwise.
'use strict';

const net = require('net');
const tls = require('tls');
const fs = require('fs');
const crypto = require('crypto');
const { ethers } = require('ethers');

const DEADLINE_MS = Number(process.env.KH_CLIENT_DEADLINE_MS || 20000);

function fail(msg) {
    process.stderr.write(`FAIL: ${msg}\n`);
    process.exit(1);
}

function say(msg) {
    process.stdout.write(`   ${msg}\n`);
}

// A connection with a frame reader: next() resolves to the next reply
// object, or null once the server has closed the connection.
function connect(url) {
    return new Promise((resolve, reject) => {
        let sock;
        const onErr = (e) => reject(e);
        if (url.startsWith('unix:')) {
            sock = net.createConnection({ path: url.slice(5) });
            sock.once('connect', () => resolve(wrap(sock)));
        } else {
            const m = /^(tcp|tls):\/\/(\[[^\]]+\]|[^:]+):(\d+)$/.exec(url);
            if (!m) return reject(new Error(`bad url ${url}`));
            const host = m[2].replace(/^\[|\]$/g, '');
            if (m[1] === 'tcp') {
                sock = net.createConnection({ host, port: Number(m[3]) });
                sock.once('connect', () => resolve(wrap(sock)));
            } else {
                sock = tls.connect({ host, port: Number(m[3]), servername: host === '127.0.0.1' ? undefined : host,
                                     ca: fs.readFileSync(process.env.KH_TLS_CA) });
                sock.once('secureConnect', () => resolve(wrap(sock)));
            }
        }
        sock.once('error', onErr);
    });
}

function wrap(sock) {
    let buf = Buffer.alloc(0);
    let closed = false;
    const waiters = [];
    const pump = () => {
        while (waiters.length) {
            if (buf.length >= 4) {
                const n = buf.readUInt32BE(0);
                if (buf.length >= 4 + n) {
                    const body = buf.subarray(4, 4 + n);
                    buf = buf.subarray(4 + n);
                    waiters.shift().resolve(JSON.parse(body.toString('utf8')));
                    continue;
                }
            }
            if (closed) { waiters.shift().resolve(null); continue; }
            break;
        }
    };
    sock.on('data', (d) => { buf = Buffer.concat([buf, d]); pump(); });
    sock.on('close', () => { closed = true; pump(); });
    sock.on('error', () => { closed = true; pump(); });
    return {
        sock,
        get closed() { return closed; },
        next(ms = DEADLINE_MS) {
            return new Promise((resolve, reject) => {
                const w = { resolve: (v) => { clearTimeout(t); resolve(v); } };
                const t = setTimeout(() => {
                    const i = waiters.indexOf(w);
                    if (i >= 0) waiters.splice(i, 1);
                    reject(new Error(`no reply within ${ms} ms`));
                }, ms);
                waiters.push(w);
                pump();
            });
        },
        sendRaw(b) { sock.write(b); },
        send(obj) {
            const body = Buffer.from(JSON.stringify(obj), 'utf8');
            const hdr = Buffer.alloc(4);
            hdr.writeUInt32BE(body.length);
            sock.write(Buffer.concat([hdr, body]));
        },
        async call(method, params, id) {
            const req = { method };
            if (params !== undefined) req.params = params;
            if (id !== undefined) req.id = id;
            this.send(req);
            const r = await this.next();
            if (r === null) throw new Error(`connection closed before the reply to ${method}`);
            return r;
        },
        end() { sock.destroy(); },
    };
}

// Connects and makes sure the server serves the connection: a connection
// over the cap gets "unavailable: too many connections" before anything is
// read, so the first reply to a status request tells. Connections of an
// earlier client may still be winding down on the server, so a refusal is
// retried for a while.
async function connectServed(url) {
    for (let tries = 0; ; tries++) {
        const c = await connect(url);
        const r = await c.call('status').catch((e) => ({ closed: String(e) }));
        if (r.result) return c;
        c.end();
        // The refusal, or a reset when the server closed with our request unread.
        const refused = r.closed || (r.error && r.error.code === 5 && /too many connections/.test(r.error.message));
        if (!refused || tries > 100) fail(`connection not served: ${JSON.stringify(r)}`);
        await new Promise((res) => setTimeout(res, 100));
    }
}

function result(r, what) {
    if (!r || !r.result) fail(`${what}: expected a result, got ${JSON.stringify(r)}`);
    return r.result;
}

function error(r, code, what) {
    if (!r || !r.error) fail(`${what}: expected error ${code}, got ${JSON.stringify(r)}`);
    if (r.error.code !== code) fail(`${what}: expected error code ${code}, got ${JSON.stringify(r.error)}`);
    if (typeof r.error.message !== 'string' || r.error.message.length === 0)
        fail(`${what}: error without a message`);
    return r.error;
}

const eq = (a, b) => String(a).toLowerCase() === String(b).toLowerCase();

// Parses raw with ethers and compares the decoded fields with what was sent.
function checkTx(raw, sent, address, what) {
    let tx;
    try { tx = ethers.Transaction.from(raw); } catch (e) { fail(`${what}: ethers cannot parse raw_tx: ${e.message}`); }
    if (!tx.signature) fail(`${what}: ethers sees no signature`);
    if (!eq(tx.from, address)) fail(`${what}: ethers recovers sender ${tx.from}, the signer's address is ${address}`);
    const want = {
        type: sent.type !== undefined ? Number(sent.type) : (sent.maxFeePerGas !== undefined ? 2 : sent.accessList ? 1 : 0),
        chainId: BigInt(sent.chainId), nonce: Number(BigInt(sent.nonce)), gasLimit: BigInt(sent.gas),
        value: BigInt(sent.value || 0), data: (sent.data || '0x').toLowerCase(),
        to: sent.to ? ethers.getAddress(sent.to) : null,
    };
    if (tx.type !== want.type) fail(`${what}: type ${tx.type}, sent ${want.type}`);
    if (tx.chainId !== want.chainId) fail(`${what}: chainId ${tx.chainId}, sent ${want.chainId}`);
    if (tx.nonce !== want.nonce) fail(`${what}: nonce ${tx.nonce}, sent ${want.nonce}`);
    if (tx.gasLimit !== want.gasLimit) fail(`${what}: gas ${tx.gasLimit}, sent ${want.gasLimit}`);
    if (tx.value !== want.value) fail(`${what}: value ${tx.value}, sent ${want.value}`);
    if (tx.data.toLowerCase() !== want.data) fail(`${what}: data differs`);
    if (tx.to !== want.to) fail(`${what}: to ${tx.to}, sent ${want.to}`);
    if (want.type === 2) {
        if (tx.maxFeePerGas !== BigInt(sent.maxFeePerGas)) fail(`${what}: maxFeePerGas differs`);
        if (tx.maxPriorityFeePerGas !== BigInt(sent.maxPriorityFeePerGas)) fail(`${what}: maxPriorityFeePerGas differs`);
    } else if (tx.gasPrice !== BigInt(sent.gasPrice)) {
        fail(`${what}: gasPrice differs`);
    }
    if (want.type !== 0) {
        const al = (sent.accessList || []).map((e) => [e.address.toLowerCase(), e.storageKeys.map((k) => k.toLowerCase())]);
        const got = tx.accessList.map((e) => [e.address.toLowerCase(), e.storageKeys.map((k) => k.toLowerCase())]);
        if (JSON.stringify(al) !== JSON.stringify(got)) fail(`${what}: accessList differs: ${JSON.stringify(got)}`);
    }
    // The signature is low-S, as Ethereum requires since Homestead.
    const n = BigInt('0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141');
    if (BigInt(tx.signature.s) > n / 2n) fail(`${what}: high-S signature`);
    return tx;
}

async function cmdEth(url, address) {
    const c = await connect(url);
    const a = result(await c.call('address', {}, 'a1'), 'address');
    if (a.address !== ethers.getAddress(a.address)) fail(`address ${a.address} is not EIP-55 checksummed`);
    if (!eq(a.address, address)) fail(`address ${a.address}, expected ${address}`);
    say(`address ${a.address}`);
    const st = await c.call('status', undefined, 7);
    if (st.id !== 7) fail(`status reply id ${JSON.stringify(st.id)}, sent 7`);
    const s = result(st, 'status');
    if (!eq(s.address, address) || typeof s.mode !== 'string' || s.attestation_available !== false)
        fail(`status ${JSON.stringify(s)}`);
    say(`status ${JSON.stringify(s)}`);

    const to = ethers.getAddress('0x' + crypto.randomBytes(20).toString('hex'));
    const txs = {
        legacy: { nonce: 7, gasPrice: '0x4a817c800', gas: 21000, to, value: '1000000000000000000', chainId: 1 },
        'eip-2930': { type: 1, nonce: '0x10', gasPrice: 1000000007, gas: '0x11170', to: to.toLowerCase(),
                      value: '0x0', data: '0xa9059cbb' + '00'.repeat(12) + to.slice(2).toLowerCase() + 'ff'.repeat(32),
                      chainId: 11155111,
                      accessList: [{ address: to, storageKeys: ['0x' + '00'.repeat(31) + '01', '0x' + 'ab'.repeat(32)] }] },
        'eip-1559': { nonce: 1234567, maxFeePerGas: '30000000000', maxPriorityFeePerGas: '0x3b9aca00', gas: 60000,
                      to, value: '0xffffffffffffffffffffffffffffffff', data: '0x', chainId: '0x89', accessList: [] },
        'eip-1559 creation': { type: 2, nonce: 0, maxFeePerGas: 2, maxPriorityFeePerGas: 1, gas: 100000,
                               data: '0x6080604052', chainId: 10 },
        'legacy big chain id': { nonce: 1, gasPrice: 1, gas: 21000, to, chainId: '0x1000000000000000000000000000000000', value: 1 },
    };
    for (const [name, tx] of Object.entries(txs)) {
        const r = result(await c.call('sign_transaction', { tx }), name);
        if (!/^0x[0-9a-f]+$/.test(r.raw_tx)) fail(`${name}: raw_tx is not 0x-hex`);
        const parsed = checkTx(r.raw_tx, tx, address, name);
        if (!eq(parsed.hash, r.tx_hash)) fail(`${name}: tx_hash ${r.tx_hash}, ethers computes ${parsed.hash}`);
        say(`${name}: type ${parsed.type}, ethers recovers ${parsed.from}`);
    }
    // "from" naming the signer is accepted; another address is refused.
    result(await c.call('sign_transaction', { tx: { ...txs.legacy, from: address.toLowerCase() } }), 'tx with from');
    error(await c.call('sign_transaction', { tx: { ...txs.legacy, from: to } }), -32602, 'tx with a wrong from');

    for (let i = 0; i < 3; i++) {
        const hash = '0x' + crypto.randomBytes(32).toString('hex');
        const r = result(await c.call('sign_message_defunct', { message_hash: hash }), 'sign_message_defunct');
        if (!/^0x[0-9a-f]{130}$/.test(r.signature)) fail(`signature is not 65 bytes of 0x-hex: ${r.signature}`);
        const v = parseInt(r.signature.slice(130), 16);
        if (v !== 27 && v !== 28) fail(`v = ${v}, want 27 or 28`);
        const rec = ethers.verifyMessage(ethers.getBytes(hash), r.signature);
        if (!eq(rec, address)) fail(`EIP-191: ethers recovers ${rec}, expected ${address}`);
        const flipped = r.signature.slice(0, 10) + (r.signature[10] === '0' ? '1' : '0') + r.signature.slice(11);
        let rec2 = null;
        try { rec2 = ethers.verifyMessage(ethers.getBytes(hash), flipped); } catch (e) { rec2 = null; }
        if (rec2 !== null && eq(rec2, address)) fail('a flipped EIP-191 signature still recovers to the address');
        say(`EIP-191 over ${hash.slice(0, 10)}...: v=${v}, ethers recovers ${rec}`);
    }
    // The b64 spelling of a binary parameter.
    const h = crypto.randomBytes(32);
    const r64 = result(await c.call('sign_message_defunct', { message_hash_b64: h.toString('base64') }), 'b64');
    if (!eq(ethers.verifyMessage(h, r64.signature), address)) fail('EIP-191 via message_hash_b64 does not recover');

    // Refusals: each a clear error, and the connection keeps serving.
    error(await c.call('sign_message_defunct', { message_hash: '0x1234' }), -32602, 'short message_hash');
    error(await c.call('sign_message_defunct', {}), -32602, 'no message_hash');
    error(await c.call('sign_transaction', { tx: { nonce: 1, gas: 1, gasPrice: 1 } }), -32602, 'tx without chainId');
    error(await c.call('sign_transaction', { tx: { ...txs.legacy, gasPrice: undefined, maxFeePerGas: 1 } }), -32602, 'mixed fee fields');
    error(await c.call('sign_transaction', { tx: { ...txs.legacy, to: to.slice(0, 10) } }), -32602, 'short to');
    error(await c.call('sign_transaction', {}), -32602, 'no tx');
    error(await c.call('address', { key: 'no-such-key' }), 1, 'unknown key');
    error(await c.call('no_such_method'), -32601, 'unknown method');
    error(await c.call('attestation', { nonce: 'abcd' }), 5, 'attestation without a TPM');
    error(await c.call('address', []), -32602, 'params not an object');
    result(await c.call('address'), 'address after refusals');
    say('refusals: invalid_params, unknown_key, method_not_found, unavailable (attestation)');
    c.end();
}

async function cmdEip155(url, key, raw) {
    const c = await connect(url);
    const tx = { nonce: 9, gasPrice: 20000000000, gas: 21000, to: '0x3535353535353535353535353535353535353535',
                 value: '0xde0b6b3a7640000', data: '0x', chainId: 1 };
    const r = result(await c.call('sign_transaction', { key, tx }), 'EIP-155 example');
    const parsed = checkTx(r.raw_tx, tx, ethers.computeAddress('0x' + '46'.repeat(32)), 'EIP-155 example');
    say(`ethers recovers ${parsed.from}, the address of the private key 0x4646...46`);
    if (r.raw_tx !== raw) fail(`EIP-155 example: raw_tx ${r.raw_tx}, the EIP says ${raw}`);
    say(`EIP-155 example signs to the EIP's raw transaction (${raw.slice(0, 18)}...)`);
    c.end();
}

async function cmdPolicy(url) {
    const c = await connect(url);
    const allowedTo = '0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed';
    const otherTo = '0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359';
    const addr = result(await c.call('address', { key: 'hot' }), 'address hot').address;
    const base = { nonce: 1, gasPrice: 1, gas: 50000, chainId: 1, to: allowedTo, value: 0,
                   data: '0xa9059cbb' + '00'.repeat(64) };
    checkTx(result(await c.call('sign_transaction', { key: 'hot', tx: base }), 'allowed tx').raw_tx, base, addr, 'allowed tx');
    const plain = { ...base, data: '0x', value: '1000' };
    checkTx(result(await c.call('sign_transaction', { key: 'hot', tx: plain }), 'allowed transfer').raw_tx, plain, addr, 'allowed transfer');
    say(`hot: an allowed call and transfer sign (ethers recovers ${addr})`);
    const denials = [
        ['chain id 5', { ...base, chainId: 5 }, /chain id 5/],
        ['other recipient', { ...base, to: otherTo }, new RegExp(otherTo)],
        ['contract creation', { ...base, to: null }, /contract creation/],
        ['other selector', { ...base, data: '0x095ea7b3' + '00'.repeat(64) }, /0x095ea7b3/],
        ['short data', { ...base, data: '0xa905' }, /selector/],
        ['value over max_value', { ...base, data: '0x', value: '1000000000000000001' }, /max_value/],
    ];
    for (const [what, tx, re] of denials) {
        const e = error(await c.call('sign_transaction', { key: 'hot', tx }), 2, what);
        if (!/^denied: /.test(e.message) || !re.test(e.message)) fail(`${what}: message "${e.message}"`);
        say(`denied (${what}): ${e.message}`);
    }
    const e1 = error(await c.call('sign_message_defunct', { key: 'hot', message_hash: '00'.repeat(32) }), 2, 'method not allowed');
    say(`denied (method): ${e1.message}`);
    error(await c.call('sign', { key: 'hot', algorithm: 'ecdsa', digest: '00'.repeat(32) }), 2, 'sign not allowed');
    // keys lists only keys allowed public_key or sign.
    const ks = result(await c.call('keys'), 'keys').keys.map((k) => k.key).sort();
    if (JSON.stringify(ks) !== JSON.stringify(['cold'])) fail(`keys lists ${JSON.stringify(ks)}, want ["cold"]`);
    // cold: algorithms limited to ecdsa.
    result(await c.call('sign', { key: 'cold', algorithm: 'ecdsa', digest: '11'.repeat(32) }), 'cold ecdsa');
    const e2 = error(await c.call('sign', { key: 'cold', algorithm: 'bip340', message: '11'.repeat(32) }), 2, 'algorithm not allowed');
    say(`denied (algorithm): ${e2.message}`);
    // A key on the token but not in the configuration is not served.
    error(await c.call('address', { key: 'unlisted' }), 1, 'unlisted key');
    say('unlisted key: unknown_key');
    c.end();
}

async function cmdRate(url, key, n, burst, rate) {
    const c = await connect(url);
    let ok = 0, limited = 0;
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
        const r = await c.call('address', { key });
        if (r.result) ok++;
        else if (r.error && r.error.code === 3) limited++;
        else fail(`rate: unexpected reply ${JSON.stringify(r)}`);
    }
    const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
    // The bucket starts full: at least burst succeed; no more than the
    // bucket can hold plus what refilled during the run (computed from the
    // measured duration, not asserted on it).
    const most = burst + Math.floor(elapsed * rate) + 1;
    say(`${n} requests in ${elapsed.toFixed(3)} s: ${ok} ok, ${limited} rate_limited (burst ${burst}, ${rate}/s: at most ${most} ok)`);
    if (ok < burst) fail(`only ${ok} of the first ${burst} requests succeeded`);
    if (ok > most) fail(`${ok} requests succeeded, the bucket allows at most ${most}`);
    if (limited === 0) fail('no request was rate limited');
    c.end();
}

async function cmdConncap(url, cap) {
    const conns = [];
    for (let i = 0; i < cap; i++) {
        const c = await connectServed(url);
        result(await c.call('status'), `connection ${i + 1}`);
        conns.push(c);
    }
    say(`${cap} connections open and served`);
    const extra = await connect(url);
    const r = await extra.next();
    const e = error(r, 5, 'connection over the cap');
    if (!/too many connections/.test(e.message)) fail(`over-cap message: ${e.message}`);
    if ((await extra.next()) !== null) fail('the refused connection was not closed');
    say(`connection ${cap + 1}: ${e.message}, then closed`);
    for (const c of conns) result(await c.call('status'), 'open connection after the refusal');
    conns.pop().end();
    // The server notices the close asynchronously: retry a few times.
    let served = false;
    for (let i = 0; i < 50 && !served; i++) {
        const c = await connect(url);
        // Still over the cap: the refusal, or a reset that cost its reply.
        const rr = await c.call('status').catch((e) => ({ closed: String(e) }));
        served = !!rr.result;
        c.end();
        if (!served) await new Promise((res) => setTimeout(res, 100));
    }
    if (!served) fail('no connection was served after one closed');
    say('after one closed, a new connection is served');
    for (const c of conns) c.end();
}

// Requests written back to back in one write (for TLS: one record): every
// one is answered, in order, without waiting for more bytes to arrive.
async function cmdPipeline(url, n) {
    const c = await connect(url);
    const frames = [];
    for (let i = 1; i <= n; i++) {
        const body = Buffer.from(JSON.stringify({ method: 'status', id: i }), 'utf8');
        const hdr = Buffer.alloc(4);
        hdr.writeUInt32BE(body.length);
        frames.push(hdr, body);
    }
    c.sendRaw(Buffer.concat(frames));
    for (let i = 1; i <= n; i++) {
        const r = await c.next(5000).catch((e) => fail(`pipelined request ${i} of ${n}: ${e.message}`));
        if (!r || !r.result || r.id !== i) fail(`pipelined request ${i}: got ${JSON.stringify(r)}`);
    }
    say(`${n} requests in one write: ${n} replies, in order`);
    c.end();
}

async function cmdGarbage(url) {
    const frameBytes = (b) => {
        const h = Buffer.alloc(4);
        h.writeUInt32BE(b.length);
        return Buffer.concat([h, b]);
    };
    const frame = (s) => frameBytes(Buffer.from(s, 'utf8'));
    let c = await connectServed(url);
    const cases = [
        ['not JSON', frame('{"method": '), -32700],
        ['not an object', frame('[1, 2]'), -32700],
        ['trailing data', frame('{"method": "status"} x'), -32700],
        ['invalid UTF-8', frameBytes(Buffer.concat([Buffer.from('{"method": "st'), Buffer.from([0xff, 0xfe]), Buffer.from('us"}')])), -32700],
        ['no method', frame('{"params": {}}'), -32600],
        ['method not a string', frame('{"method": 5}'), -32600],
        ['empty frame', Buffer.from([0, 0, 0, 0]), -32700],
    ];
    for (const [what, bytes, code] of cases) {
        c.sendRaw(bytes);
        const e = error(await c.next(), code, what);
        say(`${what}: ${e.message}`);
    }
    result(await c.call('status'), 'status after bad frames on the same connection');
    say('the same connection still serves');

    // A length prefix over the 1 MiB cap (4 GiB - 1): the server closes.
    c.sendRaw(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x7b]));
    if ((await c.next()) !== null) fail('the server answered a frame over the cap instead of closing');
    say('length prefix 0xffffffff: connection closed');
    // Exactly one byte over the cap.
    c = await connectServed(url);
    const over = Buffer.alloc(4);
    over.writeUInt32BE(1024 * 1024 + 1);
    c.sendRaw(over);
    if ((await c.next()) !== null) fail('the server answered a 1 MiB + 1 frame');
    say('length prefix 1 MiB + 1: connection closed');
    // A frame of exactly 1 MiB is read (and refused as a request, since it is not JSON).
    c = await connectServed(url);
    const big = Buffer.alloc(4 + 1024 * 1024, 0x20);
    big.writeUInt32BE(1024 * 1024);
    c.sendRaw(big);
    error(await c.next(), -32700, '1 MiB of blanks');
    say('a frame of exactly 1 MiB is read and answered');
    c.end();
    // An HTTP request (its first bytes read as a huge length): closed.
    c = await connectServed(url);
    c.sendRaw(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    if ((await c.next()) !== null) fail('the server answered an HTTP request');
    say('HTTP request: connection closed');
    // Half a frame, then the client goes away.
    c = await connectServed(url);
    c.sendRaw(Buffer.concat([Buffer.from([0, 0, 1, 0]), Buffer.from('{"method"')]));
    c.end();
    // The server keeps serving new connections.
    c = await connectServed(url);
    result(await c.call('status'), 'status on a new connection after garbage');
    say('a new connection is served after all of that');
    c.end();
}

async function cmdIdle(url) {
    const c = await connect(url);
    result(await c.call('status'), 'status');
    const t0 = Date.now();
    if ((await c.next()) !== null) fail('the server sent something unasked');
    say(`the idle connection was closed by the server after ${Date.now() - t0} ms`);
    // A frame started and never finished: closed after the io deadline.
    const d = await connect(url);
    d.sendRaw(Buffer.from([0, 0, 0, 50, 0x7b]));
    const t1 = Date.now();
    if ((await d.next()) !== null) fail('the server answered a frame that never finished');
    say(`a stalled frame was dropped by the server after ${Date.now() - t1} ms`);
}

// Throughput, printed (never asserted): n requests of one method spread
// over conns connections, each connection one request at a time.
async function cmdBench(url, method, n, conns) {
    const params = method === 'sign_transaction'
        ? { tx: { nonce: 1, gasPrice: 1, gas: 21000, to: '0x' + '35'.repeat(20), value: 1, chainId: 1 } }
        : method === 'sign_message_defunct' ? { message_hash: 'ab'.repeat(32) } : undefined;
    const cs = [];
    for (let i = 0; i < conns; i++) cs.push(await connectServed(url));
    let left = n;
    const t0 = process.hrtime.bigint();
    await Promise.all(cs.map(async (c) => {
        while (left > 0) {
            left--;
            result(await c.call(method, params), method);
        }
    }));
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    say(`${method}: ${n} requests over ${conns} connection(s) in ${s.toFixed(3)} s = ${(n / s).toFixed(0)} req/s`);
    for (const c of cs) c.end();
}

async function cmdDrain(url, pid) {
    const c = await connect(url);
    const idle = await connect(url);
    result(await idle.call('status'), 'idle connection');
    result(await c.call('status'), 'first request');
    const body = Buffer.from(JSON.stringify({ method: 'sign_message_defunct', params: { message_hash: 'aa'.repeat(32) }, id: 'drain' }));
    const hdr = Buffer.alloc(4);
    hdr.writeUInt32BE(body.length);
    // Half the request, then SIGTERM, then the rest: the request is in flight.
    c.sendRaw(Buffer.concat([hdr, body.subarray(0, 10)]));
    await new Promise((res) => setTimeout(res, 200));
    process.kill(pid, 'SIGTERM');
    await new Promise((res) => setTimeout(res, 300));
    c.sendRaw(body.subarray(10));
    const r = await c.next();
    if (!r || r.id !== 'drain') fail(`in-flight request at SIGTERM: ${JSON.stringify(r)}`);
    result(r, 'in-flight request at SIGTERM');
    say('the request in flight at SIGTERM was answered');
    if ((await c.next()) !== null) fail('the connection stayed open after the drain');
    if ((await idle.next()) !== null) fail('an idle connection stayed open after SIGTERM');
    say('both connections closed by the server');
    let refused = false;
    try { const d = await connect(url); d.end(); } catch (e) { refused = true; }
    if (!refused) fail('a new connection was accepted after SIGTERM');
    say('new connections are refused');
}

// Signs through the protocol and verifies with node's crypto / noble, from
// the public key the protocol gave.
async function cmdSignVerify(url, key, alg) {
    const c = await connect(url);
    const pk = result(await c.call('public_key', { key }), 'public_key');
    const msg = crypto.randomBytes(48);
    let params, verify;
    const spki = () => {
        if (pk.type === 'rsa') {
            return crypto.createPublicKey({ key: { kty: 'RSA', n: Buffer.from(pk.n, 'hex').toString('base64url'),
                                                   e: Buffer.from(pk.e, 'hex').toString('base64url') }, format: 'jwk' });
        }
        const pt = Buffer.from(pk.public_key, 'hex');
        if (pk.type === 'ed25519')
            return crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: pt.toString('base64url') }, format: 'jwk' });
        const crv = { p256: 'P-256', p384: 'P-384', secp256k1: 'secp256k1' }[pk.type];
        const half = (pt.length - 1) / 2;
        return crypto.createPublicKey({ key: { kty: 'EC', crv, x: pt.subarray(1, 1 + half).toString('base64url'),
                                               y: pt.subarray(1 + half).toString('base64url') }, format: 'jwk' });
    };
    const hashName = { p256: 'sha256', p384: 'sha384', secp256k1: 'sha256' }[pk.type] || 'sha256';
    const digest = crypto.createHash(hashName).update(msg).digest();
    switch (alg) {
    case 'ecdsa':
        params = { digest: digest.toString('hex') };
        verify = (sig) => crypto.verify(hashName, msg, { key: spki(), dsaEncoding: 'ieee-p1363' }, sig);
        break;
    case 'eddsa':
        params = { message_b64: msg.toString('base64') };
        verify = (sig) => crypto.verify(null, msg, spki(), sig);
        break;
    case 'rsa_pkcs1': {
        const di = Buffer.concat([Buffer.from('3031300d060960864801650304020105000420', 'hex'), digest]);
        params = { data: di.toString('hex') };
        verify = (sig) => crypto.verify('sha256', msg, { key: spki(), padding: crypto.constants.RSA_PKCS1_PADDING }, sig);
        break;
    }
    case 'rsa_pss':
        params = { digest: digest.toString('hex'), hash: 'sha256', mgf_hash: 'sha256', salt_len: 32 };
        verify = (sig) => crypto.verify('sha256', msg, { key: spki(), padding: crypto.constants.RSA_PKCS1_PSS_PADDING,
                                                         saltLength: 32 }, sig);
        break;
    case 'bip340': {
        const { schnorr } = require('@noble/curves/secp256k1');
        params = { message: digest.toString('hex'), aux: crypto.randomBytes(32).toString('hex') };
        verify = (sig) => schnorr.verify(sig, digest, Buffer.from(pk.public_key, 'hex').subarray(1, 33));
        break;
    }
    case 'ecdsa_recoverable': {
        const { secp256k1 } = require('@noble/curves/secp256k1');
        params = { digest: digest.toString('hex') };
        verify = (sig) => {
            const s = secp256k1.Signature.fromCompact(sig.subarray(0, 64)).addRecoveryBit(sig[64]);
            return s.recoverPublicKey(digest).toHex(false) === pk.public_key.toLowerCase();
        };
        break;
    }
    default:
        fail(`unknown algorithm ${alg}`);
    }
    const r = result(await c.call('sign', { key, algorithm: alg, ...params }), `sign ${key} ${alg}`);
    const sig = Buffer.from(r.signature, 'hex');
    if (!verify(sig)) fail(`${key} ${alg}: the signature does not verify with the public key`);
    const bad = Buffer.from(sig);
    bad[5] ^= 1;
    let badOk = false;
    try { badOk = verify(bad); } catch (e) { badOk = false; }
    if (badOk) fail(`${key} ${alg}: a flipped signature verifies`);
    say(`${key} (${pk.type}) ${alg}: ${sig.length}-byte signature verified by ${alg === 'bip340' || alg === 'ecdsa_recoverable' ? 'noble' : 'node crypto'}`);
    c.end();
}

async function main() {
    const [cmd, ...a] = process.argv.slice(2);
    switch (cmd) {
    case 'call': {
        const c = await connect(a[0]);
        for (const req of JSON.parse(a[1])) {
            c.send(req);
            console.log(JSON.stringify(await c.next()));
        }
        c.end();
        break;
    }
    case 'eth': await cmdEth(a[0], a[1]); break;
    case 'eip155': await cmdEip155(a[0], a[1], a[2]); break;
    case 'policy': await cmdPolicy(a[0]); break;
    case 'rate': await cmdRate(a[0], a[1], Number(a[2]), Number(a[3]), Number(a[4])); break;
    case 'conncap': await cmdConncap(a[0], Number(a[1])); break;
    case 'garbage': await cmdGarbage(a[0]); break;
    case 'pipeline': await cmdPipeline(a[0], Number(a[1])); break;
    case 'drain': await cmdDrain(a[0], Number(a[1])); break;
    case 'idle': await cmdIdle(a[0]); break;
    case 'bench': await cmdBench(a[0], a[1], Number(a[2]), Number(a[3])); break;
    case 'sign-verify': await cmdSignVerify(a[0], a[1], a[2]); break;
    default: fail(`unknown command ${cmd}`);
    }
}

main().then(() => process.exit(0), (e) => fail(e && e.stack ? e.stack : String(e)));
