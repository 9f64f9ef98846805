// A small markdown renderer for the model's answers: fenced code blocks, inline code, bold and
// italic, headings, lists, quotes and paragraphs. The answer is text, never HTML: every piece of
// it reaches the page through createElement and text nodes (no innerHTML, no attribute taken
// from the text, no links), so nothing a model writes can ever run as script.
"use strict";

(() => {
  const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)\s*$/;
  const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const BULLET = /^\s*[-*+]\s+(.*)$/;
  const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
  const QUOTE = /^\s{0,3}>\s?(.*)$/;
  const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
  // Inline spans, in order of precedence: code, then bold, then italic.
  const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__(?!\w)|\*(?=[^\s*])([\s\S]*?[^\s*])\*|(?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/g;

  function element(tag, className) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  // Appends the inline spans of `text` to `parent`.
  function renderInline(text, parent) {
    let at = 0;
    for (const match of text.matchAll(INLINE)) {
      if (match.index > at) parent.appendChild(document.createTextNode(text.slice(at, match.index)));
      if (match[1] !== undefined) {
        const code = element("code");
        code.textContent = match[2].length > 2 && match[2].startsWith(" ") && match[2].endsWith(" ")
          ? match[2].slice(1, -1) : match[2];
        parent.appendChild(code);
      } else if (match[3] !== undefined || match[4] !== undefined) {
        renderInline(match[3] ?? match[4], parent.appendChild(element("strong")));
      } else {
        renderInline(match[5] ?? match[6], parent.appendChild(element("em")));
      }
      at = match.index + match[0].length;
    }
    if (at < text.length) parent.appendChild(document.createTextNode(text.slice(at)));
  }

  // The lines of a paragraph, kept as the model broke them.
  function paragraph(lines) {
    const p = element("p");
    lines.forEach((line, i) => {
      if (i > 0) p.appendChild(element("br"));
      renderInline(line, p);
    });
    return p;
  }

  function codeBlock(language, lines) {
    const block = element("div", "code-block");
    if (language) {
      const label = element("div", "code-language");
      label.textContent = language;
      block.appendChild(label);
    }
    const pre = element("pre");
    const code = element("code");
    code.textContent = lines.join("\n");
    pre.appendChild(code);
    block.appendChild(pre);
    return block;
  }

  // Renders `text` into a new DocumentFragment. An unclosed fence (an answer still streaming)
  // runs to the end, as code.
  function render(text) {
    const fragment = document.createDocumentFragment();
    const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
    let prose = [];
    let list = null;
    const flush = () => {
      if (prose.length) fragment.appendChild(paragraph(prose));
      prose = [];
      list = null;
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = FENCE.exec(line);
      if (fence) {
        flush();
        const body = [];
        const marker = fence[1];
        for (i++; i < lines.length; i++) {
          const trimmed = lines[i].trim();
          if (trimmed.startsWith(marker[0].repeat(marker.length)) && /^([`~])\1*$/.test(trimmed)) break;
          body.push(lines[i]);
        }
        fragment.appendChild(codeBlock(fence[2], body));
        continue;
      }
      if (!line.trim()) { flush(); continue; }
      const heading = HEADING.exec(line);
      if (heading) {
        flush();
        const h = element("h" + Math.min(6, heading[1].length + 2));
        renderInline(heading[2], h);
        fragment.appendChild(h);
        continue;
      }
      if (RULE.test(line)) { flush(); fragment.appendChild(element("hr")); continue; }
      const bullet = BULLET.exec(line);
      const numbered = bullet ? null : NUMBERED.exec(line);
      if (bullet || numbered) {
        const tag = bullet ? "ul" : "ol";
        if (prose.length || !list || list.tagName.toLowerCase() !== tag) {
          flush();
          list = fragment.appendChild(element(tag));
          if (numbered) list.start = Number(numbered[1]);
        }
        renderInline(bullet ? bullet[1] : numbered[2], list.appendChild(element("li")));
        continue;
      }
      const quote = QUOTE.exec(line);
      if (quote) {
        flush();
        const blockquote = element("blockquote");
        renderInline(quote[1], blockquote);
        fragment.appendChild(blockquote);
        continue;
      }
      if (list && /^\s+\S/.test(line)) {  // an indented line continues the list's last item
        const item = list.lastChild;
        item.appendChild(element("br"));
        renderInline(line.trim(), item);
        continue;
      }
      list = null;
      prose.push(line);
    }
    flush();
    return fragment;
  }

  window.rilletMarkdown = Object.freeze({ render });
})();
