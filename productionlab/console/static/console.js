// The console's only script (loaded with this response's CSP nonce): a copy button
// for a password shown once. Everything else works without JavaScript.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const source = document.getElementById(button.dataset.copy);
    if (!source || !navigator.clipboard) continue;
    button.hidden = false;
    button.addEventListener("click", () => {
      navigator.clipboard.writeText(source.textContent).then(() => { button.textContent = "Copied"; });
    });
  }
});
