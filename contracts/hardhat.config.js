// Hardhat only serves a local JSON-RPC node here (`hardhat node`, see README.md); the
// contracts are compiled by compile.mjs with solc-js, so no compiler is configured and
// nothing is downloaded. Hardhat's own cache and build-info folders stay out of artifacts/.
export default {
  paths: {
    sources: "./src",
    cache: "./.hardhat/cache",
    artifacts: "./.hardhat/artifacts",
  },
  networks: {
    node: {
      type: "edr-simulated",
      chainType: "l1",
      hardfork: "prague",
      chainId: 31337,
    },
  },
};
