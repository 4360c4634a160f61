/* ComputeMesh: the browser wallet (EIP-1193, `window.ethereum`) on two pages.
   - Wallets page (#wallet-link): link the wallet with Sign-In with Ethereum (EIP-4361): get a
     nonce from the API, build the message here, have the wallet `personal_sign` it, post both.
   - Job page (the escrow panel's [data-testid=fund-browser] button): fund the escrow from the
     wallet: `fund-calls` gives the approve and fund transactions, the wallet sends them with
     `eth_sendTransaction`, receipts are polled with `eth_getTransactionReceipt`. The chain
     indexer then sees JobFunded and the live job page shows the escrow funded.
   Without a wallet in the browser both buttons stay hidden. */
(function () {
  "use strict";

  var eth = window.ethereum;
  var RECEIPT_TIMEOUT_MS = 5 * 60 * 1000;

  // --- talking to the platform ------------------------------------------------------------
  function csrfToken() {
    try {
      var headers = JSON.parse(document.body.getAttribute("hx-headers") || "{}");
      if (headers["X-CSRFToken"]) return headers["X-CSRFToken"];
    } catch (e) { /* fall through to the cookie */ }
    var m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  async function api(url, options) {
    options = options || {};
    var init = { credentials: "same-origin", headers: { Accept: "application/json" } };
    if (options.body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.headers["X-CSRFToken"] = csrfToken();
      init.body = JSON.stringify(options.body);
    }
    var response = await fetch(url, init);
    var data = null;
    try { data = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) {
      var err = new Error((data && data.detail) || ("The platform answered " + response.status + "."));
      err.status = response.status;
      err.code = data && data.code;
      throw err;
    }
    return data;
  }

  // --- talking to the wallet --------------------------------------------------------------
  function request(method, params) {
    return eth.request({ method: method, params: params || [] });
  }

  function errorText(e) {
    if (e && e.code === 4001) return "You declined the request in your wallet.";
    if (e && e.code === 4902) return "Your wallet does not know the platform's chain; add it in the wallet first.";
    var text = (e && (e.message || e.reason)) || String(e);
    return text.replace(/^Error:\s*/, "");
  }

  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  function utf8Hex(text) {
    var bytes = new TextEncoder().encode(text), out = "0x";
    for (var i = 0; i < bytes.length; i++) out += bytes[i].toString(16).padStart(2, "0");
    return out;
  }

  function word(address) { return address.toLowerCase().replace(/^0x/, "").padStart(64, "0"); }
  function short(hash) { return hash.slice(0, 10) + "…" + hash.slice(-4); }
  function tusd(units) {  // base units (6 decimals) as "12.50"
    var s = units.toString().padStart(7, "0");
    var whole = s.slice(0, -6), frac = s.slice(-6).replace(/0+$/, "");
    while (frac.length < 2) frac += "0";
    return whole + "." + frac;
  }

  async function firstAccount() {
    var accounts = await request("eth_requestAccounts");
    if (!accounts || !accounts.length) throw new Error("Your wallet shared no account; unlock it and try again.");
    return accounts[0];
  }

  async function ensureChain(chainId) {
    var current = parseInt(await request("eth_chainId"), 16);
    if (current === chainId) return;
    try {
      await request("wallet_switchEthereumChain", [{ chainId: "0x" + chainId.toString(16) }]);
    } catch (e) {
      throw new Error("Your wallet is on chain " + current + "; switch it to chain " + chainId +
                      " (" + errorText(e) + ").");
    }
    current = parseInt(await request("eth_chainId"), 16);
    if (current !== chainId) throw new Error("Your wallet is on chain " + current + "; switch it to chain " + chainId + ".");
  }

  async function waitForReceipt(hash) {
    var deadline = Date.now() + RECEIPT_TIMEOUT_MS, delay = 250;
    while (Date.now() < deadline) {
      var receipt = await request("eth_getTransactionReceipt", [hash]);
      if (receipt && receipt.blockNumber) return receipt;
      await sleep(delay);
      delay = Math.min(2000, delay * 2);
    }
    throw new Error("Transaction " + hash + " is not mined after 5 minutes; look at it in your wallet.");
  }

  async function callUint(to, data) {
    var answer = await request("eth_call", [{ to: to, data: data }, "latest"]);
    return BigInt(answer && answer !== "0x" ? answer : "0x0");
  }

  // --- the wallets page: link with Sign-In with Ethereum ------------------------------------
  // EIP-4361's text, field by field (the server parses it and checks every field).
  function siweMessage(f) {
    return [
      f.domain + " wants you to sign in with your Ethereum account:",
      f.address, "", f.statement, "",
      "URI: " + f.uri,
      "Version: 1",
      "Chain ID: " + f.chainId,
      "Nonce: " + f.nonce,
      "Issued At: " + f.issuedAt,
      "Expiration Time: " + f.expirationTime
    ].join("\n");
  }

  function initLink() {
    var box = document.getElementById("wallet-link");
    if (!box) return;
    var button = box.querySelector('[data-testid="link-wallet"]');
    var message = box.querySelector('[data-wallet="message"]');
    var missing = box.querySelector('[data-wallet="missing"]');
    if (!eth || !button) return;
    button.hidden = false;
    if (missing) missing.hidden = true;
    function say(text, bad) { message.textContent = text; message.classList.toggle("error", !!bad); }

    button.addEventListener("click", async function () {
      button.disabled = true;
      try {
        say("Asking your wallet for its account…");
        var account = await firstAccount();
        var n = await api(box.getAttribute("data-nonce-url") + "?address=" + encodeURIComponent(account));
        var text = siweMessage({
          domain: location.host, address: n.address, statement: n.statement,
          uri: location.origin + location.pathname, chainId: n.chain_id, nonce: n.nonce,
          issuedAt: new Date().toISOString(), expirationTime: new Date(n.expires_at).toISOString()
        });
        say("Sign the message in your wallet (it costs nothing)…");
        var signature = await request("personal_sign", [utf8Hex(text), n.address]);
        say("Checking the signature…");
        var wallet = await api(box.getAttribute("data-link-url"), { body: { message: text, signature: signature } });
        say("Linked " + wallet.address + ".");
        location.reload();
      } catch (e) {
        say(errorText(e), true);
        button.disabled = false;
      }
    });
  }

  // --- the job page: fund the escrow from the wallet ----------------------------------------
  function initFund() {
    var button = document.querySelector('[data-testid="fund-browser"]');
    if (!button || !eth) return;
    button.hidden = false;
    // The note that says what to do without a browser wallet is not needed with one.
    document.querySelectorAll('#escrow [data-wallet="missing"]').forEach(function (el) { el.hidden = true; });
    var jobUrl = button.getAttribute("data-fund-calls").replace(/fund-calls\/?$/, "");

    function say(text, bad) {
      var el = document.querySelector('[data-live="fund-message"]');
      if (!el) return;
      el.textContent = text;
      el.classList.toggle("error", !!bad);
    }

    button.addEventListener("click", async function () {
      button.disabled = true;
      try {
        say("Asking your wallet for its account…");
        var from = await firstAccount();
        say("Getting the funding transactions…");
        // The platform signs the job's terms for this account only: the escrow refuses the
        // fund call from any other (and so does not let a copy of it front-run this one).
        var calls = await api(button.getAttribute("data-fund-calls") + "?address=" + encodeURIComponent(from));
        await ensureChain(calls.chain_id);
        var need = BigInt(calls.amount_units);
        var held = await callUint(calls.token, "0x70a08231" + word(from));          // balanceOf
        if (held < need) {
          throw new Error("Your wallet " + from + " holds " + tusd(held) + " tUSD; the escrow needs " +
                          tusd(need) + " tUSD.");
        }
        var allowed = await callUint(calls.token, "0xdd62ed3e" + word(from) + word(calls.escrow)); // allowance
        if (allowed < need) {
          say("Step 1 of 2: allow the escrow contract to take " + tusd(need) + " tUSD — confirm in your wallet…");
          var approveHash = await request("eth_sendTransaction", [{ from: from, to: calls.approve.to, data: calls.approve.data }]);
          say("Step 1 of 2: waiting for the approval " + short(approveHash) + " to be mined…");
          var approved = await waitForReceipt(approveHash);
          if (approved.status !== "0x1") throw new Error("The approval " + approveHash + " was reverted on chain.");
        }
        say("Step 2 of 2: fund the escrow with " + tusd(need) + " tUSD — confirm in your wallet…");
        var fundHash = await request("eth_sendTransaction", [{ from: from, to: calls.fund.to, data: calls.fund.data }]);
        say("Step 2 of 2: waiting for the funding " + short(fundHash) + " to be mined…");
        var funded = await waitForReceipt(fundHash);
        if (funded.status !== "0x1") throw new Error("The funding " + fundHash + " was reverted on chain.");
        say("Funded on chain in block " + parseInt(funded.blockNumber, 16) +
            ". Waiting for the platform to see it; the job starts then…");
        watchFunded(jobUrl);
      } catch (e) {
        say(errorText(e), true);
        button.disabled = false;
      }
    });
  }

  // The live page (job_live.js) swaps the escrow panel when its status moves. Without a
  // socket (or if it missed the change), the API says so and the page is reloaded.
  async function watchFunded(jobUrl) {
    var deadline = Date.now() + 10 * 60 * 1000, seenAt = 0;
    while (Date.now() < deadline) {
      await sleep(3000);
      var panel = document.getElementById("escrow");
      if (!panel || panel.getAttribute("data-escrow-status") !== "unfunded") return; // shown
      var job;
      try { job = await api(jobUrl); } catch (e) { continue; }
      if (!job.escrow || job.escrow.status === "unfunded") continue;
      if (!seenAt) seenAt = Date.now();
      else if (Date.now() - seenAt > 5000) { location.reload(); return; }
    }
  }

  function init() { initLink(); initFund(); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
