#!/usr/bin/env node
// Independent Ed25519 verifier for keyhold-sign's tests, on @noble/curves
// (not on OpenSSL, which keyhold's vault signs with).
//
//   verify <sig-hex> <message-file> <pub-hex>   exit 0 valid, 1 invalid
'use strict';

const { ed25519 } = require('@noble/curves/ed25519');
const { hexToBytes } = require('@noble/hashes/utils');
const fs = require('fs');

function die(msg) {
    process.stderr.write(`ed25519.cjs: ${msg}\n`);
    process.exit(2);
}

function hex(s, len, what) {
    if (typeof s !== 'string' || !/^([0-9a-fA-F]{2})*$/.test(s)) die(`${what}: not hex`);
    const b = hexToBytes(s.toLowerCase());
    if (b.length !== len) die(`${what}: ${b.length} bytes, want ${len}`);
    return b;
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd !== 'verify' || args.length !== 3) die('usage: verify <sig-hex> <message-file> <pub-hex>');
const sig = hex(args[0], 64, 'sig');
const msg = new Uint8Array(fs.readFileSync(args[1]));
const pub = hex(args[2], 32, 'pub');
let valid = false;
try { valid = ed25519.verify(sig, msg, pub); } catch (e) { valid = false; }
console.log(valid ? 'valid' : 'invalid');
process.exit(valid ? 0 : 1);
