// The playground: a chat with the server's models through its own OpenAI API, streamed with
// fetch and the server-sent events of the answer. Every text that reaches the page, the model's
// above all, goes through text nodes (rilletMarkdown.render for answers): never HTML.
"use strict";

(() => {
  const KEY_STORAGE = "rillet.playground.apiKey";
  const $ = (id) => document.getElementById(id);
  const state = { messages: [], controller: null };

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function headers() {
    const sent = { "Content-Type": "application/json" };
    const key = $("api-key").value.trim();
    if (key) sent.Authorization = "Bearer " + key;
    return sent;
  }

  function showNotice(text, kind = "error") {
    const notice = $("notice");
    notice.textContent = text;
    notice.className = kind;
    notice.hidden = false;
  }

  function hideNotice() {
    $("notice").hidden = true;
  }

  // One sentence for a refused request, in the server's own words.
  async function describeFailure(response) {
    let error = {};
    try {
      error = (await response.json()).error || {};
    } catch (ignored) { /* not JSON */ }
    const message = error.message || response.statusText;
    if (response.status === 401) {
      return "This server needs an API key: enter it in the API key field (it is kept in this browser's " +
        "localStorage). The server said: " + message;
    }
    const wait = response.headers.get("retry-after");
    return `${response.status}${error.code ? " " + error.code : ""}: ${message}` +
      (wait && !message.includes("try again in") ? ` (retry after ${wait} s)` : "");
  }

  async function loadModels() {
    const select = $("model");
    const chosen = select.value;
    let response;
    try {
      response = await fetch("/v1/models", { headers: headers() });
    } catch (error) {
      showNotice("Cannot reach the server: " + error.message);
      return;
    }
    if (!response.ok) {
      select.replaceChildren();
      showNotice(await describeFailure(response));
      return;
    }
    const models = (await response.json()).data || [];
    select.replaceChildren(...models.map((model) => {
      const option = element("option", null, model.id);
      option.value = model.id;
      return option;
    }));
    if (models.some((model) => model.id === chosen)) select.value = chosen;
    if (models.length) hideNotice();
    else showNotice("The server lists no model that this key may use.");
  }

  function numberField(id) {
    const text = $(id).value.trim();
    return text === "" ? undefined : Number(text);
  }

  function requestBody(messages) {
    const system = $("system").value.trim();
    const stop = $("stop-sequences").value.split("\n").filter((line) => line !== "");
    const body = {
      model: $("model").value,
      messages: system ? [{ role: "system", content: system }, ...messages] : messages,
      stream: true,
      stream_options: { include_usage: true },
      temperature: numberField("temperature"),
      top_p: numberField("top-p"),
      max_tokens: numberField("max-tokens"),
      n: numberField("n"),
      seed: numberField("seed"),
    };
    if (stop.length) body.stop = stop;
    return body;
  }

  // The data of each server-sent event of a streamed response.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
        if (data) yield data;
      }
    }
  }

  function addTurn(role, label) {
    const turn = element("div", "turn " + role);
    turn.appendChild(element("div", "role", label));
    $("transcript").appendChild(turn);
    return turn;
  }

  // The view of one answer: a body for each choice, and a line of figures.
  function answerView(n) {
    const turn = addTurn("assistant", "assistant");
    const bodies = [];
    for (let i = 0; i < n; i++) {
      const choice = turn.appendChild(element("div", "choice"));
      if (n > 1) choice.appendChild(element("div", "choice-label", `choice ${i + 1}` + (i ? "" : " (continues the chat)")));
      bodies.push(choice.appendChild(element("div", "content")));
    }
    const stats = turn.appendChild(element("div", "stats"));
    const pending = new Set();
    return {
      turn,
      show(index, text) {  // re-rendered at most once a frame
        if (pending.has(index)) return;
        pending.add(index);
        requestAnimationFrame(() => {
          pending.delete(index);
          bodies[index].replaceChildren(window.rilletMarkdown.render(text()));
          $("transcript").scrollTop = $("transcript").scrollHeight;
        });
      },
      figures(items) {  // [name, text before the value, value, text after it]
        stats.replaceChildren(...items.map(([name, before, value, after]) => {
          const figure = element("span", "stat");
          figure.dataset.stat = name;
          if (before) figure.appendChild(document.createTextNode(before + " "));
          figure.appendChild(element("span", "value", value));
          if (after) figure.appendChild(document.createTextNode(" " + after));
          return figure;
        }));
        $("transcript").scrollTop = $("transcript").scrollHeight;
      },
    };
  }

  function figures(view, timing, usage, choices, finishReasons) {
    const items = [];
    if (usage) {
      items.push(["prompt_tokens", "", String(usage.prompt_tokens), "prompt tokens"]);
      items.push(["completion_tokens", "", String(usage.completion_tokens), "completion tokens"]);
    }
    if (timing.first !== null) {
      items.push(["ttft", "", ((timing.first - timing.sent) / 1000).toFixed(2), "s to first token"]);
      // The pace of decoding: the tokens after each choice's first, over the time since the first;
      // over the whole time when the answer came at once (a token each, or tokens held up together).
      const decoding = (timing.ended - timing.first) / 1000;
      if (usage && usage.completion_tokens > choices && decoding >= 0.05) {
        items.push(["tokens_per_second", "", ((usage.completion_tokens - choices) / decoding).toFixed(1), "tokens/s"]);
      } else if (usage && usage.completion_tokens > 0) {
        const rate = usage.completion_tokens / ((timing.ended - timing.sent) / 1000);
        items.push(["tokens_per_second", "", rate.toFixed(1), "tokens/s"]);
      }
    }
    const reasons = finishReasons.filter((reason) => reason);
    if (reasons.length) items.push(["finish_reason", "finish:", [...new Set(reasons)].join(", "), ""]);
    view.figures(items);
  }

  // A turn that failed, or was stopped before a word, leaves the conversation and the page as they
  // were, and its text goes back in the box to be sent again.
  function withdraw(turns, text) {
    turns.forEach((turn) => turn.remove());
    if (!$("input").value) $("input").value = text;
  }

  async function send(text) {
    hideNotice();
    if (!$("model").value) await loadModels();
    if (!$("model").value) {
      withdraw([], text);
      return;
    }
    const user = { role: "user", content: text };
    const userTurn = addTurn("user", "you");
    userTurn.appendChild(element("div", "content plain", text));
    const body = requestBody([...state.messages, user]);
    const choices = body.n || 1;
    const view = answerView(choices);
    const texts = Array(choices).fill("");
    const finishReasons = Array(choices).fill(null);
    const timing = { sent: performance.now(), first: null, ended: null };
    let usage = null;
    let stopped = false;
    let failed = false;
    state.controller = new AbortController();
    setBusy(true);
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal,
      });
      if (!response.ok) {
        withdraw([userTurn, view.turn], text);
        showNotice(await describeFailure(response));
        return;
      }
      for await (const data of events(response)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || "the answer failed");
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.finish_reason) finishReasons[choice.index] = choice.finish_reason;
          const piece = choice.delta && choice.delta.content;
          if (!piece) continue;
          if (timing.first === null) timing.first = performance.now();
          texts[choice.index] += piece;
          view.show(choice.index, () => texts[choice.index]);
        }
      }
    } catch (error) {
      if (error.name === "AbortError") {
        stopped = true;
      } else {
        failed = true;
        showNotice("The answer failed: " + error.message);
      }
    } finally {
      timing.ended = performance.now();
      state.controller = null;
      setBusy(false);
    }
    if (failed || (stopped && !texts[0])) {
      withdraw([userTurn, view.turn], text);
      return;
    }
    // A stopped answer stays in the conversation as far as it was written. The first choice
    // continues the conversation.
    state.messages.push(user, { role: "assistant", content: texts[0] });
    figures(view, timing, usage, choices, stopped ? ["stopped"] : finishReasons);
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
  }

  function start() {
    const keyField = $("api-key");
    keyField.value = localStorage.getItem(KEY_STORAGE) || "";
    keyField.addEventListener("change", () => {
      const key = keyField.value.trim();
      if (key) localStorage.setItem(KEY_STORAGE, key);
      else localStorage.removeItem(KEY_STORAGE);
      loadModels();
    });
    $("forget-key").addEventListener("click", () => {
      keyField.value = "";
      localStorage.removeItem(KEY_STORAGE);
      loadModels();
    });
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      const text = $("input").value.trim();
      if (!text || state.controller) return;
      $("input").value = "";
      send(text);
    });
    $("input").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("stop").addEventListener("click", () => state.controller && state.controller.abort());
    $("new-chat").addEventListener("click", () => {
      if (state.controller) state.controller.abort();
      state.messages = [];
      $("transcript").replaceChildren();
      hideNotice();
    });
    loadModels();
  }

  // For a person at the browser's console, and for the tests: the conversation as sent.
  window.rilletPlayground = Object.freeze({ messages: () => structuredClone(state.messages) });
  start();
})();
