#!/usr/bin/env node
// msgpack.js — reads NDJSON on stdin and writes each object msgpack-encoded,
// concatenated, on stdout: the body of an application/msgpack batch. A tiny
// encoder (nil, bool, int, float64, str, array, map) so the tests need no
// msgpack package; integers within ±2^53, maps in the JSON's key order.
// By default each value takes its smallest form, as msgpack libraries write
// it (the ingest's in-place path takes those); `--wide` writes every int as
// 64 bits and every str, array and map in its 32-bit form (valid msgpack
// the ingest canonicalises through its slow path).
'use strict';

const fs = require('fs');

const wide = process.argv.includes('--wide');

// The header of a str, array or map of n items: [fix base, 8-bit code or
// null, 16-bit code, 32-bit code], the smallest form that holds n.
function head(n, fix, fixMax, c8, c16, c32) {
    if (!wide && n <= fixMax) return Buffer.from([fix | n]);
    if (!wide && c8 !== null && n < 0x100) return Buffer.from([c8, n]);
    if (!wide && n < 0x10000) return Buffer.from([c16, n >> 8, n & 0xff]);
    const h = Buffer.alloc(5);
    h[0] = c32;
    h.writeUInt32BE(n, 1);
    return h;
}

function int(v) {
    if (!wide && v >= 0 && v < 128) return Buffer.from([v]);
    if (!wide && v < 0 && v >= -32) return Buffer.from([v & 0xff]);
    const forms = v >= 0 ? [[0x100, 0xcc, 1], [0x10000, 0xcd, 2], [0x100000000, 0xce, 4]]
                         : [[-0x80, 0xd0, 1], [-0x8000, 0xd1, 2], [-0x80000000, 0xd2, 4]];
    for (const [lim, code, w] of wide ? [] : forms) {
        if (v >= 0 ? v < lim : v >= lim) {
            const b = Buffer.alloc(1 + w);
            b[0] = code;
            if (v >= 0) b.writeUIntBE(v, 1, w);
            else b.writeIntBE(v, 1, w);
            return b;
        }
    }
    const b = Buffer.alloc(9);
    b[0] = v >= 0 ? 0xcf : 0xd3;
    if (v >= 0) b.writeBigUInt64BE(BigInt(v), 1);
    else b.writeBigInt64BE(BigInt(v), 1);
    return b;
}

function enc(v, out) {
    if (v === null) out.push(Buffer.from([0xc0]));
    else if (v === false) out.push(Buffer.from([0xc2]));
    else if (v === true) out.push(Buffer.from([0xc3]));
    else if (typeof v === 'number' && Number.isInteger(v)) out.push(int(v));
    else if (typeof v === 'number') {
        const b = Buffer.alloc(9);
        b[0] = 0xcb;
        b.writeDoubleBE(v, 1);
        out.push(b);
    } else if (typeof v === 'string') {
        const s = Buffer.from(v, 'utf8');
        out.push(head(s.length, 0xa0, 31, 0xd9, 0xda, 0xdb), s);
    } else if (Array.isArray(v)) {
        out.push(head(v.length, 0x90, 15, null, 0xdc, 0xdd));
        for (const x of v) enc(x, out);
    } else {
        const keys = Object.keys(v);
        out.push(head(keys.length, 0x80, 15, null, 0xde, 0xdf));
        for (const k of keys) {
            enc(k, out);
            enc(v[k], out);
        }
    }
}

const out = [];
for (const line of fs.readFileSync(0, 'utf8').split('\n')) {
    if (line.trim() !== '') enc(JSON.parse(line), out);
}
process.stdout.write(Buffer.concat(out));
