#!/usr/bin/env node
// Node entry of the CLI: runs the compiled module (npm install builds dist/ through `prepare`).
// First, every thread's young generation is held at its initial size (src/framework/threads.ts): set before
// the CLI's modules load and any worker starts.
const { holdYoungGeneration } = await import("../dist/src/framework/threads.js");
holdYoungGeneration();
const { main } = await import("../dist/src/cli/main.js");
process.exitCode = await main(process.argv.slice(2));
