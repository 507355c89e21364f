#!/usr/bin/env node
// Independent verifiers for keyhold's integration tests, on @noble/curves and
// @noble/hashes (not on anything keyhold or OpenSSL computes). Each
// subcommand prints its answer on stdout; verifiers exit 0 when the signature
// is valid and 1 when it is not, so the shell tests can check both ways.
//
//   nostr-id <pubkey-hex> <created_at> <kind> <tags-json> <content>
//   nostr-verify <event.json>                    id recomputed + BIP-340 signature
//   schnorr-verify <sig-hex> <msg-hex> <xonly-pub-hex>
//   schnorr-pub <priv-hex>                       x-only public key
//   eth-address-priv <priv-hex>                  EIP-55 address of a private key
//   eth-address-pub <sec1-pub-hex>               EIP-55 address of a public key
//   recover <sig65-hex r||s||v> <digest-hex>     EIP-55 address of the signer (rejects high S)
//   eth-hash-message <text>                      EIP-191 personal_sign digest
//   keccak256 <hex> | sha256 <hex>
//   bech32 <hrp> <hex>                           e.g. npub / nsec
'use strict';

const { secp256k1, schnorr } = require('@noble/curves/secp256k1');
const { keccak_256 } = require('@noble/hashes/sha3');
const { sha256 } = require('@noble/hashes/sha2');
const { bytesToHex, hexToBytes, utf8ToBytes } = require('@noble/hashes/utils');
const fs = require('fs');

function die(msg) {
    process.stderr.write(`verify.cjs: ${msg}\n`);
    process.exit(2);
}

function hex(s, len, what) {
    if (typeof s !== 'string' || !/^([0-9a-fA-F]{2})*$/.test(s)) die(`${what}: not hex: ${s}`);
    const b = hexToBytes(s.toLowerCase());
    if (len !== undefined && b.length !== len) die(`${what}: ${b.length} bytes, want ${len}`);
    return b;
}

function eip55(addr20) {
    const lower = bytesToHex(addr20);
    const h = bytesToHex(keccak_256(utf8ToBytes(lower)));
    let out = '0x';
    for (let i = 0; i < lower.length; i++)
        out += parseInt(h[i], 16) >= 8 ? lower[i].toUpperCase() : lower[i];
    return out;
}

function ethAddressOfPoint(point) {
    const uncompressed = point.toRawBytes(false); // 0x04 || X || Y
    return eip55(keccak_256(uncompressed.subarray(1)).subarray(12));
}

// NIP-01: id = sha256(JSON.stringify([0, pubkey, created_at, kind, tags, content]))
function nostrId(ev) {
    const ser = JSON.stringify([0, ev.pubkey, ev.created_at, ev.kind, ev.tags, ev.content]);
    return bytesToHex(sha256(utf8ToBytes(ser)));
}

// BIP-173 bech32 (NIP-19 uses plain bech32, not bech32m).
const CHARSET = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l';
function polymod(values) {
    const G = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
    let chk = 1;
    for (const v of values) {
        const b = chk >>> 25;
        chk = ((chk & 0x1ffffff) << 5) ^ v;
        for (let i = 0; i < 5; i++) if ((b >>> i) & 1) chk ^= G[i];
    }
    return chk >>> 0;
}
function bech32Encode(hrp, data) {
    const words = [];
    let acc = 0, bits = 0;
    for (const byte of data) {
        acc = (acc << 8) | byte; bits += 8;
        while (bits >= 5) { bits -= 5; words.push((acc >>> bits) & 31); }
    }
    if (bits > 0) words.push((acc << (5 - bits)) & 31);
    const hrpExp = [];
    for (const c of hrp) hrpExp.push(c.charCodeAt(0) >>> 5);
    hrpExp.push(0);
    for (const c of hrp) hrpExp.push(c.charCodeAt(0) & 31);
    const mod = polymod(hrpExp.concat(words, [0, 0, 0, 0, 0, 0])) ^ 1;
    const chk = [];
    for (let i = 0; i < 6; i++) chk.push((mod >>> (5 * (5 - i))) & 31);
    return hrp + '1' + words.concat(chk).map((w) => CHARSET[w]).join('');
}

const [cmd, ...args] = process.argv.slice(2);
switch (cmd) {
case 'nostr-id': {
    if (args.length !== 5) die('usage: nostr-id <pubkey> <created_at> <kind> <tags-json> <content>');
    const ev = { pubkey: args[0], created_at: Number(args[1]), kind: Number(args[2]),
                 tags: JSON.parse(args[3]), content: args[4] };
    console.log(nostrId(ev));
    break;
}
case 'nostr-verify': {
    const ev = JSON.parse(fs.readFileSync(args[0], 'utf8'));
    const id = nostrId(ev);
    if (id !== ev.id) { console.log(`invalid: id ${ev.id} != recomputed ${id}`); process.exit(1); }
    let valid = false;
    try { valid = schnorr.verify(hex(ev.sig, 64, 'sig'), hex(ev.id, 32, 'id'), hex(ev.pubkey, 32, 'pubkey')); }
    catch (e) { valid = false; }
    console.log(valid ? 'valid' : 'invalid: bad signature');
    process.exit(valid ? 0 : 1);
}
case 'schnorr-verify': {
    let valid = false;
    try { valid = schnorr.verify(hex(args[0], 64, 'sig'), hex(args[1], undefined, 'msg'), hex(args[2], 32, 'pub')); }
    catch (e) { valid = false; }
    console.log(valid ? 'valid' : 'invalid');
    process.exit(valid ? 0 : 1);
}
case 'schnorr-pub':
    console.log(bytesToHex(schnorr.getPublicKey(hex(args[0], 32, 'priv'))));
    break;
case 'eth-address-priv':
    console.log(ethAddressOfPoint(secp256k1.ProjectivePoint.fromPrivateKey(hex(args[0], 32, 'priv'))));
    break;
case 'eth-address-pub':
    console.log(ethAddressOfPoint(secp256k1.ProjectivePoint.fromHex(hex(args[0], undefined, 'pub'))));
    break;
case 'recover': {
    const sig = hex(args[0], 65, 'sig');
    const digest = hex(args[1], 32, 'digest');
    const v = sig[64];
    if (v !== 0 && v !== 1) { console.log(`invalid: v = ${v}, want 0 or 1`); process.exit(1); }
    let addr;
    try {
        const s = secp256k1.Signature.fromCompact(sig.subarray(0, 64)).addRecoveryBit(v);
        if (s.hasHighS()) { console.log('invalid: high S'); process.exit(1); }
        const pub = s.recoverPublicKey(digest);
        // Recovery alone proves nothing: the signature must also verify under the recovered key.
        if (!secp256k1.verify(s, digest, pub.toRawBytes(true))) { console.log('invalid: does not verify'); process.exit(1); }
        addr = ethAddressOfPoint(pub);
    } catch (e) {
        console.log(`invalid: ${e.message}`);
        process.exit(1);
    }
    console.log(addr);
    break;
}
case 'eth-hash-message': {
    const msg = utf8ToBytes(args[0]);
    const prefix = utf8ToBytes(`\x19Ethereum Signed Message:\n${msg.length}`);
    const all = new Uint8Array(prefix.length + msg.length);
    all.set(prefix, 0);
    all.set(msg, prefix.length);
    console.log(bytesToHex(keccak_256(all)));
    break;
}
case 'keccak256':
    console.log(bytesToHex(keccak_256(hex(args[0], undefined, 'data'))));
    break;
case 'sha256':
    console.log(bytesToHex(sha256(hex(args[0], undefined, 'data'))));
    break;
case 'bech32':
    console.log(bech32Encode(args[0], hex(args[1], undefined, 'data')));
    break;
default:
    die(`unknown subcommand: ${cmd}`);
}
