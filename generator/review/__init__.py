"""The review UIs over the review state in `generator.cases`: terminal loop, static sheet, web app."""
