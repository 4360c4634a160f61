#!/usr/bin/env node
// Compiles contracts/src/*.sol with the solc-js that package-lock.json pins (its compiler
// ships inside the npm package: nothing is downloaded) and writes one JSON artifact per
// contract to contracts/artifacts/. The artifacts are committed, so the Python side needs
// no Node.js at run time.
//
//   node contracts/compile.mjs           # (re)write the artifacts
//   node contracts/compile.mjs --check   # exit 1 when the committed artifacts differ
import { existsSync, mkdirSync, readdirSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SRC = path.join(HERE, "src");
const ARTIFACTS = path.join(HERE, "artifacts");
const NODE_MODULES = path.join(HERE, "node_modules");
const EVM_VERSION = "prague";
// Many runs: these contracts are deployed once and called per job, so runtime gas is what
// counts (bench/gas.py); they stay far below the 24 KiB code-size limit.
const OPTIMIZER = { enabled: true, runs: 10000 };

if (!existsSync(path.join(NODE_MODULES, "solc"))) {
  console.error("error: contracts/node_modules is missing; run `npm ci --prefix contracts` (or `make contracts`)");
  process.exit(2);
}
const solc = (await import("solc")).default;

function readSources() {
  const sources = {};
  for (const name of readdirSync(SRC).filter((f) => f.endsWith(".sol")).sort()) {
    // Source unit names are relative ("src/JobEscrow.sol") so that the metadata hash in the
    // bytecode does not depend on where the checkout lies.
    sources[`src/${name}`] = { content: readFileSync(path.join(SRC, name), "utf8") };
  }
  return sources;
}

// Imports other than our own sources ("@openzeppelin/contracts/...") come from node_modules.
function findImports(importPath) {
  const candidates = [path.join(HERE, importPath), path.join(NODE_MODULES, importPath)];
  for (const file of candidates) {
    const resolved = path.resolve(file);
    if (!resolved.startsWith(HERE + path.sep)) continue;
    if (existsSync(resolved)) return { contents: readFileSync(resolved, "utf8") };
  }
  return { error: `not found in contracts/ or contracts/node_modules: ${importPath}` };
}

function compile() {
  const sources = readSources();
  const input = {
    language: "Solidity",
    sources,
    settings: {
      evmVersion: EVM_VERSION,
      optimizer: OPTIMIZER,
      outputSelection: Object.fromEntries(
        Object.keys(sources).map((name) => [name, { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "storageLayout"] }]),
      ),
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors ?? []).filter((e) => e.severity === "error");
  // Warnings about OpenZeppelin's own code (its transient-storage notice) are not ours to fix.
  const ours = (e) => e.severity === "error" || !e.sourceLocation || e.sourceLocation.file in sources;
  for (const e of (output.errors ?? []).filter(ours)) console.error(e.formattedMessage ?? e.message);
  if (errors.length > 0) {
    console.error(`error: ${errors.length} compiler error(s)`);
    process.exit(1);
  }
  const version = solc.version();
  const artifacts = {};
  for (const [sourceName, contracts] of Object.entries(output.contracts ?? {})) {
    if (!(sourceName in sources)) continue; // libraries from node_modules
    for (const [contractName, c] of Object.entries(contracts)) {
      if (!c.evm.bytecode.object) continue; // interfaces and abstract contracts
      const artifact = {
        contractName,
        sourceName,
        compiler: { solc: version, evmVersion: EVM_VERSION, optimizer: OPTIMIZER },
        abi: c.abi,
        bytecode: `0x${c.evm.bytecode.object}`,
        deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
        // Slot of each state variable (tests read balances straight from the chain's state).
        storage: c.storageLayout.storage.map(({ label, slot, offset }) => ({ label, slot: Number(slot), offset })),
      };
      artifacts[`${contractName}.json`] = `${JSON.stringify(artifact, null, 2)}\n`;
    }
  }
  if (Object.keys(artifacts).length === 0) {
    console.error("error: contracts/src produced no deployable contract");
    process.exit(1);
  }
  return artifacts;
}

function existingArtifacts() {
  if (!existsSync(ARTIFACTS)) return [];
  return readdirSync(ARTIFACTS).filter((f) => f.endsWith(".json")).sort();
}

const check = process.argv.includes("--check");
const artifacts = compile();

if (check) {
  const problems = [];
  for (const [file, text] of Object.entries(artifacts)) {
    const target = path.join(ARTIFACTS, file);
    if (!existsSync(target)) problems.push(`missing: artifacts/${file}`);
    else if (readFileSync(target, "utf8") !== text) problems.push(`differs from the sources: artifacts/${file}`);
  }
  for (const file of existingArtifacts()) {
    if (!(file in artifacts)) problems.push(`no longer produced by any source: artifacts/${file}`);
  }
  if (problems.length > 0) {
    console.error("error: the committed contract artifacts do not match contracts/src:");
    for (const p of problems) console.error(`  ${p}`);
    console.error("run `node contracts/compile.mjs` (or `make contracts`) and commit contracts/artifacts/");
    process.exit(1);
  }
  console.log(`contract artifacts up to date (${Object.keys(artifacts).length} contracts, solc ${solc.version()})`);
} else {
  mkdirSync(ARTIFACTS, { recursive: true });
  for (const file of existingArtifacts()) {
    if (!(file in artifacts)) unlinkSync(path.join(ARTIFACTS, file));
  }
  for (const [file, text] of Object.entries(artifacts)) writeFileSync(path.join(ARTIFACTS, file), text);
  console.log(`wrote ${Object.keys(artifacts).length} artifacts to contracts/artifacts/ (solc ${solc.version()}, ${EVM_VERSION})`);
}
