#!/usr/bin/env node
// Node entry of the CLI: runs the compiled module (npm install builds dist/ through `prepare`).
import { main } from "../dist/src/cli/main.js";

process.exitCode = await main(process.argv.slice(2));
