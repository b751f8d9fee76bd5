#!/usr/bin/env node
// slow_reader.js PORT REQUEST-FILE DELAY-MS [LATE-FILE] — writes
// REQUEST-FILE's bytes on one connection to 127.0.0.1:PORT without reading
// anything, then LATE-FILE's bytes DELAY-MS/2 later (input that arrives
// after the server stopped reading), starts reading only DELAY-MS after
// connecting (so the server's answers pile up in the kernel's buffers
// meanwhile), and copies everything received to stdout
// until the server ends the connection. A reset is reported on stderr as
// "reset after N bytes" (what a client sees when a server closes with
// unread input: the kernel drops whatever answers were still queued). Ends
// by itself after 20 s at most.
//
// With SLOW_READER_GO=PATH in the environment it starts reading when PATH
// exists instead of after DELAY-MS (the test creates it once the server
// has queued what must pile up, however slow a loaded machine is), and
// gives up after 120 s.
'use strict';

const net = require('net');
const fs = require('fs');

const [port, file, delay, late] = process.argv.slice(2);
const chunks = [];
let got = 0;
const sock = net.connect({ host: '127.0.0.1', port: Number(port) });
sock.pause();
sock.on('connect', () => {
    sock.write(fs.readFileSync(file));
    if (late)
        setTimeout(() => sock.write(fs.readFileSync(late)), Number(delay) / 2);
    const go = process.env.SLOW_READER_GO;
    if (!go) {
        setTimeout(() => sock.resume(), Number(delay));
        return;
    }
    const poll = setInterval(() => {
        if (fs.existsSync(go)) {
            clearInterval(poll);
            sock.resume();
        }
    }, 50);
});
sock.on('data', (d) => {
    chunks.push(d);
    got += d.length;
});
sock.on('error', (e) => {
    process.stderr.write(`reset after ${got} bytes (${e.code})\n`);
});
sock.on('close', () => {
    process.stdout.write(Buffer.concat(chunks), () => process.exit(0));
});
const limit = process.env.SLOW_READER_GO ? 120 : 20;
setTimeout(() => {
    process.stderr.write(`gave up after ${limit} s (${got} bytes)\n`);
    sock.destroy();
}, limit * 1000).unref();
