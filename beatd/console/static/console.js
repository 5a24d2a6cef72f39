// beatd console: the little script the pages use (no inline scripts: the CSP is default-src 'self').
// A button with data-confirm="question" asks before its form is sent (deletions).
"use strict";
document.addEventListener("submit", (event) => {
  const button = event.submitter;
  const question = button && button.dataset ? button.dataset.confirm : undefined;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
