"""Training: corpus -> tokenizer -> dataset -> fitted model -> bundle, as named steps
(``pipeline``). It sits above evaluation because a trained model is judged before it is
installed: the summary's exact match and the golden checks ask the model through the same
``ChatBot`` path that users get. Only the interfaces import it.
"""
