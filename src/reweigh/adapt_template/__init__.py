"""The fine-tuning code that `reweigh adapt` copies into every derived recipe.

These files are templates in the literal sense: they are copied, byte for byte,
into the recipe directory, where they are hashed into its derivation like any
other training code. `adapt_data` is also imported from here, so that `adapt`
checks the user's data with exactly the code the build will read it with.
"""
